"""``ovearth calibrate`` on hostile data: splits without valid pixels, cache entries that are not theirs."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import statistics

import numpy as np
import pytest
from PIL import Image

from ovearth import Segmentor
from ovearth.calibrate.cache import name_key
from ovearth.calibrate.pool import build_pool
from ovearth.data.datasets import SegmentationDataset
from ovearth.data.protocols import load_protocol
from ovearth.run.calibrate import CalibrateOptions, calibrate, make_splits

from .conftest import run_cli
from .data.make_synthetic import make_dataset


def strict_json(text: str) -> dict:
    """JSON that holds no NaN or Infinity (which ``json.loads`` would otherwise accept)."""

    def refuse(token: str):
        raise AssertionError(f"{token} in the report")

    return json.loads(text, parse_constant=refuse)


def samples_of(root):
    return SegmentationDataset(load_protocol("loveda"), root).samples(skip_bad=False)[0]


def blank_label(sample) -> None:
    """Every pixel 0: LoveDA's reduce_zero_label makes it 255, the ignore index."""
    label = np.array(Image.open(sample.label_path))
    Image.fromarray(np.zeros_like(label)).save(sample.label_path)


def test_an_all_ignore_tile_is_reported_and_left_out_of_the_folds(monkeypatch, capsys, tiny_dir, tmp_path):
    root = make_dataset("loveda", tmp_path, num_images=4, size=(32, 40))
    blank = samples_of(root)[0]
    blank_label(blank)
    out = tmp_path / "out"
    args = ["calibrate", "--dataset", "loveda", "--data-root", root, "--model", tiny_dir]
    args += ["--no-builtin-pool", "--confidences", "0.5", "--sample-stride", "2"]
    args += ["--holdout", "0.25", "--folds", "4", "-o", out]
    code, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0, err
    report = strict_json((out / "calibration.json").read_text())
    assert report["unscored"] == [blank.name] and report["cost"]["images_run"] == 3  # not run
    # the fixed split and one fold hold out just that tile
    empty = [s for s in report["splits"] if s["heldout"] == [blank.name]]
    assert [s["name"] for s in empty] == ["fixed", "fold 1"]
    for split in empty:
        assert split["status"] == "no valid pixels" and split["pixels"]["heldout"] == 0
        assert "heldout_matrix" not in split["best"] and "baseline_matrix" not in split
    summary = report["summary"]
    assert summary["no_valid_pixels"] == ["fixed", "fold 1"] and "fixed" not in summary
    rows = summary["folds"]
    assert rows[0] == {"name": "fold 1", "images": 1, "pixels": 0, "status": "no valid pixels"}
    gains = [row["calibrated"] - row["baseline"] for row in rows[1:]]
    assert len(gains) == 3 and summary["folds_used"] == 3
    assert summary["gain_mean"] == statistics.fmean(gains)
    assert summary["gain_std"] == statistics.stdev(gains)
    assert report["headline"] == {
        "kfold_gain_mean": round(statistics.fmean(gains), 4),
        "kfold_gain_std": round(statistics.stdev(gains), 4),
        "kfold_folds_used": 3,
    }
    markdown = (out / "calibration.md").read_text()
    assert "| fold 1 | 1 | 0 | no valid pixels | - | - |" in markdown
    assert "Gain over the 3 of 4 folds with valid pixels" in markdown
    assert "1 of 4 folds (fold 1) has no valid pixels" in markdown
    assert "The fixed split's held-out images have no valid pixels" in markdown
    assert "nan" not in markdown.lower()
    lines = (out / "calibration.csv").read_text().splitlines()
    assert len(lines) == 8 and all(",,," in line for line in lines[1:])  # no fixed-split numbers
    assert (out / "calibration.png").stat().st_size > 0 and (out / "loveda_calibrated.yaml").exists()
    assert "over the 3 folds with valid pixels" in err and "note:" in err


def test_tiles_smaller_than_the_stride_count_nowhere(tiny, tmp_path):
    """Stride 16 samples from pixel 8: an 8 x 8 tile has no sampled pixel, its fold no valid pixel."""
    root = make_dataset("loveda", tmp_path, num_images=4, size=(64, 80))
    small = samples_of(root)[2]
    for path in (small.image_path, small.label_path):
        Image.fromarray(np.array(Image.open(path))[:8, :8]).save(path)
    protocol = load_protocol("loveda")
    segmentor = Segmentor(tiny, protocol.vocabulary, settings=protocol.settings)
    options = CalibrateOptions(holdout=0.25, folds=4, stride=16, confidences=(0.5,))
    pool = build_pool(protocol.vocabulary, builtin=False)
    result = calibrate(segmentor, SegmentationDataset(protocol, root), pool, tmp_path / "out", options)
    assert result["unscored"] == [small.name] and result["cost"]["images_run"] == 3
    (fold,) = [s for s in result["splits"] if s["heldout"] == [small.name]]
    assert fold["status"] == "no valid pixels" and fold["name"].startswith("fold")
    row = next(r for r in result["summary"]["folds"] if r["name"] == fold["name"])
    assert row["status"] == "no valid pixels" and result["summary"]["folds_used"] == 3
    assert np.isfinite(result["summary"]["gain_mean"]) and np.isfinite(result["summary"]["gain_std"])
    strict_json((tmp_path / "out" / "calibration.json").read_text())


def test_no_valid_pixel_at_all_is_one_sentence_before_any_model_run(monkeypatch, capsys, tiny_dir, tmp_path):
    root = make_dataset("loveda", tmp_path, num_images=4, size=(32, 40))
    args = ["calibrate", "--dataset", "loveda", "--data-root", root, "--model", tiny_dir]
    args += ["--no-builtin-pool", "--confidences", "0.5", "--sample-stride", "100", "--folds", "2"]
    code, err = run_cli(monkeypatch, capsys, *args, "-o", tmp_path / "out")
    assert code == 1, err
    assert "None of the 4 images has a labelled pixel to score at --sample-stride 100" in err
    assert "lower --sample-stride" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "calibration.json").exists()
    cached = {p.name for p in (tmp_path / "out" / "cache").rglob("*.npz")}
    assert cached == {"target.npz"}  # labels only: the model never ran


def test_calibration_images_without_valid_pixels_keep_the_protocol(tiny, tmp_path):
    root = make_dataset("loveda", tmp_path, num_images=2, size=(32, 40))
    samples = samples_of(root)
    (fixed,) = make_splits(samples, 0.5, 0)
    blank_label(samples[fixed.calibrate[0]])
    protocol = load_protocol("loveda")
    segmentor = Segmentor(tiny, protocol.vocabulary, settings=protocol.settings)
    options = CalibrateOptions(holdout=0.5, folds=0, stride=2, confidences=(0.3, 0.5))
    pool = build_pool(protocol.vocabulary, builtin=False)
    result = calibrate(segmentor, SegmentationDataset(protocol, root), pool, tmp_path / "out", options)
    best = result["splits"][0]["best"]
    assert result["splits"][0]["pixels"]["calibrate"] == 0 and best["steps"] == []
    assert best["names"] == [list(names) for names in protocol.vocabulary.classes]
    assert best["thresholds"] == list(segmentor.thresholds)
    assert best["confidence"] == protocol.settings.confidence_threshold
    assert result["headline"]["calibrated_mIoU"] == result["headline"]["baseline_mIoU"]
    assert any("calibration images have no valid pixels" in note for note in result["summary"]["notes"])


def outcome(result: dict) -> tuple:
    """What a run chose and measured (not its timing)."""
    return result["headline"], [split["best"] for split in result["splits"]]


def test_a_cache_entry_that_is_not_its_own_is_discarded_and_recomputed(tiny, tmp_path, caplog):
    root = make_dataset("loveda", tmp_path, num_images=3, size=(32, 40))
    protocol = load_protocol("loveda")
    segmentor = Segmentor(tiny, protocol.vocabulary, settings=protocol.settings)
    data = SegmentationDataset(protocol, root)
    pool = build_pool(protocol.vocabulary, {"road": ["street"]}, builtin=False)
    options = CalibrateOptions(holdout=0.34, folds=2, stride=2, confidences=(0.5,))

    def run() -> dict:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="ovearth.calibrate.cache"):
            return calibrate(segmentor, data, pool, tmp_path / "out", options)

    clean = calibrate(segmentor, data, pool, tmp_path / "clean", options)
    assert outcome(run()) == outcome(clean) and not caplog.records
    cache = tmp_path / "out" / "cache" / clean["pass_key"]
    first, second = sorted(p for p in cache.iterdir() if p.is_dir())[:2]
    road, street = name_key("road"), name_key("street")
    with np.load(first / road) as a, np.load(first / street) as b:
        assert not np.array_equal(a["maps"], b["maps"])  # the copy would change the result

    # one name's entry over another's (its bytes check: only its key tells)
    shutil.copy(first / road, first / street)
    again = run()
    assert again["cost"]["images_run"] == 1 and outcome(again) == outcome(clean)
    assert f"Discarding the cache entry {first / street}" in caplog.text
    assert 'entry: "road" here, "street" expected' in caplog.text

    # one image's entry over another's
    shutil.copy(first / road, second / road)
    again = run()
    assert again["cost"]["images_run"] == 1 and outcome(again) == outcome(clean)
    assert f"Discarding the cache entry {second / road}" in caplog.text
    assert f'image: "{first.name.rsplit("-", 1)[0]}" here' in caplog.text and "image_key: " in caplog.text

    # a label entry over another image's
    shutil.copy(first / "target.npz", second / "target.npz")
    again = run()
    assert outcome(again) == outcome(clean)
    assert f"Discarding the cache entry {second / 'target.npz'}" in caplog.text

    # an entry from before keys: its own checksum, no key
    with np.load(second / street) as entry:
        arrays = {"maps": entry["maps"], "presence": entry["presence"]}
    digest = hashlib.sha256(b"".join(np.ascontiguousarray(arrays[k]).tobytes() for k in sorted(arrays)))
    np.savez(second / street, sha256=np.array(digest.hexdigest()), **arrays)
    again = run()
    assert again["cost"]["images_run"] == 1 and outcome(again) == outcome(clean)
    assert "it records no key" in caplog.text
    assert outcome(run()) == outcome(clean) and not caplog.records  # all mended


@pytest.mark.parametrize("value", ["4", "0"])
def test_max_cuts_is_checked(monkeypatch, capsys, tiny_dir, tmp_path, value):
    root = make_dataset("loveda", tmp_path, num_images=3, size=(32, 40))
    args = ["calibrate", "--dataset", "loveda", "--data-root", root, "--model", tiny_dir]
    code, err = run_cli(monkeypatch, capsys, *args, "--max-cuts", value, "-o", tmp_path / "out")
    assert code == 1 and f"--max-cuts must be >= 8, got {value}" in err, err
