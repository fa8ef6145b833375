"""``ovearth reproduce``: fake datasets in their real layouts, the tiny model, the published figures."""

import csv
import json
import shutil

import pytest

from ovearth.errors import InputError
from ovearth.run.reproduce import PAPER_DATASETS, dataset_names, locate, plan, read_root_map, run_reproduce
from ovearth.run.reproduce_table import KINDS, PublishedSource, load_published, write_table
from tests.conftest import run_cli
from tests.data.make_synthetic import make_dataset

SIZE = (40, 48)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """A data root as a user has it: whu_aerial and udd5 under their protocol names, LoveDA by title."""
    base = tmp_path_factory.mktemp("reproduce-data")
    for name in ("whu_aerial", "udd5"):
        make_dataset(name, base, num_images=2, size=SIZE)
    make_dataset("loveda", base, num_images=2, size=SIZE)
    (base / "loveda").rename(base / "LoveDA")  # found by its title, case and punctuation ignored
    return base


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    """Two binary sets (two classes each: the cheapest evaluations), for the resume and grid runs."""
    base = tmp_path_factory.mktemp("reproduce-small")
    for name in ("whu_aerial", "inria"):
        make_dataset(name, base, num_images=2, size=SIZE)
    return base


@pytest.mark.slow  # ~20 s: four CLI runs
def test_table_equals_eval_skips_missing_and_reruns_compute_nothing(
    monkeypatch, capsys, tiny_dir, data_root, tmp_path
):
    out = tmp_path / "table"
    args = ["reproduce", "--data-root", data_root, "--datasets", "whu_aerial,udd5,loveda,vaihingen"]
    args += ["--model", tiny_dir, "--device", "cpu", "-o", out]
    code, stderr = run_cli(monkeypatch, capsys, *args)
    assert code == 0, stderr
    assert f"skipped vaihingen: no folder {data_root / 'vaihingen'}" in stderr  # the folder looked for
    table = json.loads((out / "table.json").read_text())
    rows = {r["dataset"]: r for r in table["rows"]}
    assert list(rows) == ["whu_aerial", "udd5", "loveda"]
    assert (
        table["skipped"][0]["dataset"] == "vaihingen"
        and "- vaihingen: no folder" in (out / "table.md").read_text()
    )
    assert rows["whu_aerial"]["metric"] == "IoU building" and rows["udd5"]["metric"] == "mIoU"
    assert all(r["computed_images"] == r["num_images"] == 2 for r in rows.values())

    # the same numbers as `ovearth eval`, exactly: a fresh evaluation of udd5 ...
    code, stderr = run_cli(
        monkeypatch, capsys, "eval", "--dataset", "udd5", "--data-root", data_root / "udd5",
        "--model", tiny_dir, "--device", "cpu", "-o", tmp_path / "eval_udd5",
    )  # fmt: skip
    assert code == 0, stderr
    fresh = json.loads((tmp_path / "eval_udd5" / "metrics.json").read_text())
    assert fresh["computed_images"] == 2 and fresh["mIoU"] == rows["udd5"]["score"]
    # ... and `eval` into reproduce's own folders finds every image cached: the same settings and key
    for name, folder in (("whu_aerial", "whu_aerial"), ("loveda", "LoveDA")):
        code, stderr = run_cli(
            monkeypatch, capsys, "eval", "--dataset", name, "--data-root", data_root / folder,
            "--model", tiny_dir, "--device", "cpu", "-o", out / name,
        )  # fmt: skip
        assert code == 0, stderr
        metrics = json.loads((out / name / "metrics.json").read_text())
        assert metrics["computed_images"] == 0 and metrics["run_key"] == rows[name]["run_key"]
        expected = metrics["per_class"]["building"]["IoU"] if name == "whu_aerial" else metrics["mIoU"]
        assert expected == rows[name]["score"]
    csv_rows = {r["dataset"]: r for r in csv.DictReader((out / "table.csv").open())}
    assert float(csv_rows["udd5"]["ovearth"]) == rows["udd5"]["score"]  # full precision in the CSV
    assert csv_rows["vaihingen"]["metric"] == "skipped"
    assert (out / "table.png").stat().st_size > 1000

    # the published figures and the differences from them
    paper = {s.id: s for s in load_published()}["segearth_ov3_paper"]
    cell = rows["loveda"]["published"]["segearth_ov3_paper"]
    assert cell["value"] == paper.miou["loveda"] and cell["delta"] == pytest.approx(
        rows["loveda"]["score"] - 47.4
    )
    assert rows["whu_aerial"]["published"]["segearth_ov3_paper"]["value"] is None
    average = table["average"]["ovearth"]
    assert average["score"] == pytest.approx(sum(r["score"] for r in rows.values()) / 3)
    assert average["published"]["segearth_ov3_paper"]["value"] is None  # no figure for WHU Aerial
    assert average["published"]["segearth_ov3_paper"]["covers"] == "2 of 3"
    md = (out / "table.md").read_text()
    assert "| LoveDA | mIoU |" in md and "## Sources" in md and "arxiv.org/abs/2512.08730" in md

    # run again: every image comes from the cache
    code, stderr = run_cli(monkeypatch, capsys, *args)
    assert code == 0, stderr
    again = json.loads((out / "table.json").read_text())
    assert [r["computed_images"] for r in again["rows"]] == [0, 0, 0]
    assert [r["score"] for r in again["rows"]] == [r["score"] for r in table["rows"]]


def test_a_killed_run_resumes_without_recomputing_finished_images(tiny, small_root, tmp_path):
    located = locate(["whu_aerial", "inria"], small_root)
    jobs = plan(located, tmp_path)
    seen = []

    def kill_after_three(dataset, setting, done, total, miou):
        seen.append((dataset, done))
        if len(seen) == 3:  # both whu_aerial images and the first of inria are cached
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_reproduce(tiny, located, jobs, tmp_path, progress=kill_after_three)
    assert not (tmp_path / "table.json").exists()
    resumed = run_reproduce(tiny, located, jobs, tmp_path)
    assert [r["computed_images"] for r in resumed.rows] == [0, 1]
    again = run_reproduce(tiny, located, jobs, tmp_path)
    assert [r["computed_images"] for r in again.rows] == [0, 0]
    assert [r["score"] for r in again.rows] == [r["score"] for r in resumed.rows]


def test_a_grid_gives_one_row_per_setting_and_dataset(monkeypatch, capsys, tiny_dir, small_root, tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        "settings:\n  - {name: zero, refine: 'smooth:a=0'}\n  - {name: strong, refine: 'smooth:a=0.8'}\n"
    )
    out = tmp_path / "out"
    code, stderr = run_cli(
        monkeypatch, capsys, "reproduce", "--data-root", small_root, "--datasets", "whu_aerial,inria",
        "--grid", grid, "--limit", "1", "--model", tiny_dir, "--device", "cpu", "-o", out,
    )  # fmt: skip
    assert code == 0, stderr
    table = json.loads((out / "table.json").read_text())
    keys = [(r["setting"], r["dataset"]) for r in table["rows"]]
    assert keys == [(s, d) for d in ("whu_aerial", "inria") for s in ("baseline", "zero", "strong")]
    assert table["baseline"] == "baseline" and list(table["average"]) == ["baseline", "zero", "strong"]
    for row in table["rows"]:
        assert (out / row["folder"] / "metrics.json").is_file()
        if row["setting"] == "zero":
            assert row["vs_baseline"] == 0.0  # zero strength reproduces the baseline exactly
    assert {r["refine"] for r in table["rows"]} == {
        "",
        "smooth:a=0,k=3,mode=residual",
        "smooth:a=0.8,k=3,mode=residual",
    }
    assert "| strong | WHU Aerial |" in (out / "table.md").read_text()


def test_the_published_figures_each_have_a_source():
    sources = load_published()
    assert {s.id for s in sources} >= {"segearth_ov3_paper", "proc_sam3_rerun", "proc_sam3_paper"}
    for source in sources:
        assert source.kind in KINDS and source.url.startswith("https://") and source.by and source.where
        assert source.read_from and source.miou and set(source.miou) <= set(PAPER_DATASETS)
    rerun = {s.id: s for s in sources}["proc_sam3_rerun"]
    assert round(sum(rerun.miou.values()) / 8, 1) == 52.2  # the average its authors print
    assert {s.id: s for s in sources}["z_ypnos_rerun"].miou == {"openearthmap": 44.11}
    with pytest.raises(InputError, match="missing or unknown field 'url'"):
        load_published(
            "sources:\n  - {id: a, label: A, method: M, kind: paper, by: x, where: y, read_from: z,"
            " miou: {loveda: 1}}"
        )
    with pytest.raises(InputError, match="unknown dataset 'lovda'"):
        load_published(
            "sources:\n  - {id: a, label: A, method: M, kind: paper, by: x, where: y, url: u, read_from: z,"
            " miou: {lovda: 1}}"
        )


def test_averages_use_only_sources_that_cover_every_dataset(tmp_path):
    full = PublishedSource("f", "F", "M", "paper", "x", "y", "u", "z", {"loveda": 40.0, "potsdam": 60.0})
    part = PublishedSource("p", "P", "M", "re-run", "x", "y", "u", "z", {"loveda": 45.0})
    rows = [
        {"dataset": d, "title": d, "setting": "ovearth", "metric": "mIoU", "score": s, "num_images": 1,
         "computed_images": 1, "folder": d}
        for d, s in (("loveda", 41.0), ("potsdam", 62.0))
    ]  # fmt: skip
    table = write_table(tmp_path, rows, [], [full, part], {})
    average = table["average"]["ovearth"]
    assert average["score"] == 51.5
    assert average["published"]["f"] == {"value": 50.0, "delta": 1.5, "covers": "2 of 2", "mean_delta": 1.5}
    assert average["published"]["p"]["value"] is None and rows[0]["published"]["p"]["delta"] == -4.0
    md = (tmp_path / "table.md").read_text()
    assert "| **average (2)** |  | **51.50** | 50.00 (+1.50) | - (-4.00 over 1 of 2) |" in md


def test_dataset_names_and_root_maps(tmp_path, data_root):
    assert dataset_names("paper") == list(PAPER_DATASETS) and len(dataset_names("all")) == 17
    assert dataset_names("LoveDA, potsdam,loveda") == ["loveda", "potsdam"]
    with pytest.raises(InputError, match="Unknown dataset 'lovda'. Did you mean loveda"):
        dataset_names("lovda,potsdam")
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(data_root / "udd5", elsewhere)
    roots = tmp_path / "roots.yaml"
    roots.write_text("udd5: elsewhere\nvdd: /no/such/vdd\n")
    found = {i.name: i for i in locate(["udd5", "vdd", "potsdam"], None, read_root_map(roots))}
    assert found["udd5"].dataset is not None and found["udd5"].dataset.root == elsewhere
    assert found["vdd"].reason == "no folder /no/such/vdd (its root in the data-root map)"
    assert "no root for it in the data-root map" in found["potsdam"].reason
    roots.write_text("udd6: x\n")
    with pytest.raises(InputError, match="Did you mean udd5"):
        read_root_map(roots)
    broken = tmp_path / "broken"
    (broken / "udd5" / "val" / "src").mkdir(parents=True)  # images folder without labels
    (reason,) = [i.reason for i in locate(["udd5"], broken)]
    assert "labels folder not found" in reason


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--datasets", "lovda"], "Unknown dataset 'lovda'. Did you mean loveda"),
        (["--grid", "GRID"], "expected 'settings:'"),
        (["--grid", "paper", "--refine", "smooth:a=0.2"], "--refine and --grid both set the refinement"),
        (["--datasets", "potsdam,vaihingen"], "none of the 2 dataset(s) was found"),
        (["--limit", "0"], "--limit must be a positive number"),
    ],
)
def test_bad_input_is_one_sentence_and_exit_code_1(
    monkeypatch, capsys, tiny_dir, data_root, tmp_path, extra, message
):
    grid = tmp_path / "bad_grid.yaml"
    grid.write_text("settings: []\n")
    extra = [str(grid) if e == "GRID" else e for e in extra]
    code, stderr = run_cli(
        monkeypatch,
        capsys,
        "reproduce",
        "--data-root",
        data_root,
        "--model",
        tiny_dir,
        "-o",
        tmp_path / "o",
        *extra,
    )
    assert code == 1 and message in stderr and "Traceback" not in stderr
    code, stderr = run_cli(monkeypatch, capsys, "reproduce", "--model", tiny_dir, "-o", tmp_path / "o")
    assert code == 1 and "Give --data-root DIR" in stderr


@pytest.mark.slow
def test_two_gloo_processes_give_the_table_of_one(tiny_dir, small_root, tmp_path):
    import os
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1")
    args = [
        "reproduce",
        "--data-root",
        str(small_root),
        "--datasets",
        "whu_aerial,inria",
        "--model",
        str(tiny_dir),
    ]
    args += ["--device", "cpu"]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    done = subprocess.run(
        [*launcher, "-m", "ovearth", *args, "-o", str(tmp_path / "two")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    one = subprocess.run(
        [sys.executable, "-m", "ovearth", *args, "-o", str(tmp_path / "one")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    two_rows = json.loads((tmp_path / "two" / "table.json").read_text())["rows"]
    one_rows = json.loads((tmp_path / "one" / "table.json").read_text())["rows"]
    assert [r["world_size"] for r in two_rows] == [2, 2] and [r["world_size"] for r in one_rows] == [1, 1]
    assert [r["score"] for r in two_rows] == pytest.approx([r["score"] for r in one_rows], abs=1e-9)
