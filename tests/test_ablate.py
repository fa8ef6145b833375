"""The ablation runner on synthetic datasets with the tiny model."""

import csv
import json
import sys

import pytest

from ovearth.cli import main
from ovearth.errors import InputError
from ovearth.run.ablate import load_grid, run_ablation, settings_from_specs
from ovearth.segment.settings import SegmentSettings
from tests.data.make_synthetic import make_dataset


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("ablate-data")
    return {name: make_dataset(name, base, num_images=2, size=(40, 48)) for name in ("loveda", "potsdam")}


def test_ablation_tables_match_the_evaluations(tiny, roots, tmp_path):
    grid = settings_from_specs(["smooth:a=0", "smooth:a=0.5,mode=convex"])
    results = run_ablation(tiny, roots, grid, tmp_path)
    rows = list(csv.DictReader((tmp_path / "ablation.csv").open()))
    assert [r["setting"] for r in rows] == ["baseline", "smooth:a=0", "smooth:a=0.5,mode=convex"]
    for dataset in roots:
        base = json.loads((tmp_path / dataset / "baseline" / "metrics.json").read_text())["mIoU"]
        assert float(rows[0][f"{dataset} mIoU"]) == pytest.approx(base, abs=1e-4)
        assert float(rows[1][f"{dataset} delta"]) == 0.0  # zero strength reproduces the baseline exactly
        smoothed = results[dataset]["smooth:a=0.5,mode=convex"]["mIoU"]
        assert float(rows[2][f"{dataset} delta"]) == pytest.approx(smoothed - base, abs=1e-4)
        assert results[dataset]["smooth:a=0.5,mode=convex"]["refine"] == "smooth:a=0.5,k=3,mode=convex"
    md = (tmp_path / "ablation.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| ") and "setting" not in line]
    assert sum(line.count("**") for line in table) == 2 * len(roots)  # one best per dataset
    assert (tmp_path / "ablation.png").stat().st_size > 1000


def test_paper_grid_covers_mission_part_3():
    grid = load_grid("paper")
    specs = " ".join(s.refine for s in grid)
    assert grid[0].name == "baseline" and len(grid) == 11
    wanted = ("smooth:a=0.2", "lowpass:r=12,b=0.2", "clip:mode=affinity", "clip:mode=text", "laplacian:")
    for refiner in wanted:
        assert refiner in specs
    assert {s.refine_for for s in grid} == {"both", "decoder", "mask"}
    assert "backbone" in {s.refine_at for s in grid}


def test_grid_files_are_validated(tmp_path):
    good = tmp_path / "g.yaml"
    good.write_text(
        "settings:\n  - {name: dec, refine: 'smooth:a=0.3', refine_for: decoder}\n  - {zoom: 'k=2'}\n"
    )
    grid = load_grid(good)
    assert [s.name for s in grid] == ["baseline", "dec", "zoom k=2"] and grid[1].refine_for == "decoder"
    assert grid[2].apply(SegmentSettings()).zoom == "k=2"
    for text, message in [
        ("settings: []", "expected 'settings:'"),
        ("settings:\n  - {refine: 'smoth'}", "Did you mean smooth"),
        ("settings:\n  - {refine: 'smooth', where: x}", "unknown field 'where'"),
        ("settings:\n  - {refine: 'smooth', refine_at: backbone, refine_for: mask}", "refine_for"),
        ("settings:\n  - {zoom: 'k=0'}", "k must be"),
    ]:
        good.write_text(text)
        with pytest.raises(InputError, match=message):
            load_grid(good)


def test_ablate_command(monkeypatch, capsys, tiny_dir, roots, tmp_path):
    roots_file = tmp_path / "roots.yaml"
    roots_file.write_text("".join(f"{k}: {v}\n" for k, v in roots.items()))
    argv = [
        "ovearth",
        "ablate",
        "--datasets",
        "loveda",
        "--data-root-map",
        str(roots_file),
        "--model",
        str(tiny_dir),
        "--refine",
        "smooth:a=0.2",
        "--limit",
        "1",
        "-o",
        str(tmp_path / "out"),
    ]
    monkeypatch.setattr(sys, "argv", argv)
    main()
    assert "baseline mIoU" in capsys.readouterr().err and (tmp_path / "out" / "ablation.md").exists()
    monkeypatch.setattr(sys, "argv", [*argv[:-2], "--datasets", "vaihingen", "-o", str(tmp_path / "o2")])
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code == 1 and "no data root for dataset 'vaihingen'" in capsys.readouterr().err
