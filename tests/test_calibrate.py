"""``ovearth calibrate`` with the tiny SAM 3: known answers, eval reproduces the report, resume, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from ovearth import Segmentor
from ovearth.calibrate.pool import build_pool
from ovearth.data.datasets import SegmentationDataset
from ovearth.data.protocols import load_protocol, protocol_yaml
from ovearth.errors import InputError
from ovearth.model.preprocess import to_chw_uint8
from ovearth.run.calibrate import CalibrateOptions, calibrate
from ovearth.segment.fusion import finish
from ovearth.segment.settings import SegmentSettings
from ovearth.segment.vocabulary import Vocabulary

from .conftest import make_image, run_cli
from .data.make_synthetic import make_dataset

NAMES = ["background", "building", "house", "roof", "road", "street", "highway"]
#: the planted answer: class 1 = house or roof, class 2 = street, and their thresholds (off
#: any coarse grid, inside the range of the classes' scores: about 0.13..0.35 here)
TRUTH_NAMES = [["background"], ["house", "roof"], ["street"]]
TRUTH_THRESHOLDS = [0.1, 0.2237, 0.2462]


def test_logits_for_several_confidences_equal_separate_runs(tiny):
    view = to_chw_uint8(make_image(4, 40, 48))
    grid = [0.2, 0.26, 0.3]
    for batched in (False, True):  # the per-prompt loop (CPU) and the padded batch (accelerators)
        for crop in (0, 32):
            settings = SegmentSettings(use_semantic=False, slide_crop=crop, slide_stride=24 if crop else 0)
            seg = Segmentor(tiny, "road,street;tree", settings=settings, prompt_batch=2)
            seg.batched_instances = batched
            logits, presence = seg.name_logits(view, confidences=grid)
            changed = False
            for g, confidence in enumerate(grid):
                one = Segmentor(
                    tiny, seg.vocabulary, settings=seg.settings.replace(confidence_threshold=confidence)
                )
                one.batched_instances = batched
                expected, expected_presence = one.name_logits(view)
                assert torch.equal(logits[g], expected) and torch.equal(presence, expected_presence)
                changed |= not torch.equal(logits[g], logits[0])
            assert changed  # the grid does change the instance term here
    with pytest.raises(InputError, match="fast mode without zoom"):
        Segmentor(tiny, "road", mode="reference").name_logits(view, confidences=grid)


def write_planted(root, tiny, count: int = 8) -> None:
    """Images and labels made by the tiny model's own maps with the planted names and thresholds."""
    (root / "img").mkdir(parents=True)
    (root / "ann").mkdir()
    seg = Segmentor(tiny, ";".join(NAMES))
    chosen = [NAMES.index(n) for names in TRUTH_NAMES for n in names]
    name_class = [k for k, names in enumerate(TRUTH_NAMES) for _ in names]
    for i in range(count):
        rgb = make_image(10 + i, 40, 48)
        logits, _ = seg.name_logits(to_chw_uint8(rgb))
        _, labels = finish(logits[chosen], np.ones((40, 48), bool), name_class, 3, TRUTH_THRESHOLDS, 0)
        Image.fromarray(rgb).save(root / "img" / f"t{i}.png")
        Image.fromarray(labels).save(root / "ann" / f"t{i}.png")


def planted_protocol(path) -> None:
    """The protocol to calibrate: other names and one threshold for all."""
    layout = {"images": "img", "labels": "ann", "image_suffix": ".png", "label_suffix": ".png"}
    text = protocol_yaml(
        "planted", Vocabulary.parse("background;building;road"), SegmentSettings(prob_thd=0.1, bg_idx=0)
    )
    path.write_text(text + yaml.safe_dump({"layout": layout}))


@pytest.fixture(scope="module")
def planted(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    write_planted(root / "data", tiny)
    planted_protocol(root / "planted.yaml")
    (root / "candidates.yaml").write_text("building: [house, roof]\nroad: [street, highway]\n")
    return root


def test_calibrate_recovers_planted_names_and_thresholds(monkeypatch, capsys, tiny_dir, planted, tmp_path):
    """Default options: the names exactly, the thresholds to 1e-3 (cut points of the data), mIoU 100."""
    out = tmp_path / "out"
    args = ["calibrate", "--dataset-config", planted / "planted.yaml", "--data-root", planted / "data"]
    args += ["--model", tiny_dir, "--candidates", planted / "candidates.yaml", "--no-builtin-pool"]
    args += ["--confidences", "0.5", "--sample-stride", "1", "--holdout", "0.25", "--folds", "2"]
    code, err = run_cli(monkeypatch, capsys, *args, "-o", out)
    assert code == 0, err
    report = json.loads((out / "calibration.json").read_text())
    assert report["threshold_search"] == {"rule": "cuts", "max_cuts": 1024}
    fixed = report["splits"][0]
    assert fixed["name"] == "fixed" and len(fixed["heldout"]) == 2
    assert fixed["best"]["names"] == TRUTH_NAMES
    assert fixed["best"]["objective"] == 1.0  # the planted labels exactly, on the calibration pixels
    found = fixed["best"]["thresholds"]
    assert all(abs(t - truth) < 1e-3 for t, truth in zip(found[1:], TRUTH_THRESHOLDS[1:], strict=True)), found
    assert report["summary"]["fixed"]["calibrated"]["mIoU"] == 100.0
    assert report["summary"]["fixed"]["baseline"]["mIoU"] < 60
    # a fold's threshold may differ from the truth by less than its calibration pixels' gap
    # there, which a held-out pixel can fall in (fold 2: one pixel)
    assert all(fold["calibrated"] > 99.5 for fold in report["summary"]["folds"])
    assert "held-out mIoU" in err and "100.00" in err
    protocol = load_protocol(out / "planted_calibrated.yaml")
    assert [list(names) for names in protocol.vocabulary.classes] == TRUTH_NAMES
    # the YAML holds the thresholds the search scored, to the last digit
    assert protocol.settings.class_prob_thd == (("house", found[1]), ("street", found[2]))
    assert protocol.settings.prob_thd == 0.1 and protocol.settings.bg_idx == 0
    record = yaml.safe_load((out / "planted_calibrated.yaml").read_text())["calibration"]
    assert record["thresholds_tried"].startswith("cut points of the data")
    for name in ("calibration.md", "calibration.csv", "calibration.png", "heldout.txt"):
        assert (out / name).stat().st_size > 0, name
    assert f"| road | road | street | {found[2]} |" in (out / "calibration.md").read_text().replace(
        "| 2 |", "| road |"
    )
    # the fixed grid is still an option (the same cache: no model pass), and too coarse here
    code, err = run_cli(monkeypatch, capsys, *args, "--thresholds", "0.05:0.95:0.05", "-o", out)
    assert code == 0, err
    coarse = json.loads((out / "calibration.json").read_text())
    assert coarse["cost"]["images_run"] == 0
    assert coarse["threshold_search"]["rule"] == "grid" and len(coarse["threshold_search"]["values"]) == 19
    assert all(round(t / 0.05, 6).is_integer() for t in coarse["splits"][0]["best"]["thresholds"])
    assert coarse["summary"]["fixed"]["calibrated"]["mIoU"] < 95


def test_eval_of_the_written_yaml_reproduces_the_heldout_report(
    monkeypatch, capsys, tiny, tiny_dir, tmp_path
):
    root = make_dataset("loveda", tmp_path, num_images=6, size=(40, 48))
    protocol = load_protocol("loveda")
    segmentor = Segmentor(tiny, protocol.vocabulary, settings=protocol.settings)
    options = CalibrateOptions(holdout=0.34, folds=0, stride=1, confidences=(0.5,))  # data cut points
    pool = build_pool(protocol.vocabulary, max_names=3)
    result = calibrate(segmentor, SegmentationDataset(protocol, root), pool, tmp_path / "cal", options)
    reported = result["summary"]["fixed"]
    assert reported["calibrated"]["mIoU"] != reported["baseline"]["mIoU"]  # something was chosen
    # thresholds between two sampled scores, finer than any grid: the YAML must keep them exactly
    found = result["splits"][0]["best"]["thresholds"]
    assert any(len(repr(t)) > 5 for t in found), found
    split = tmp_path / "cal" / "heldout.txt"
    for config, which in ((tmp_path / "cal" / "loveda_calibrated.yaml", "calibrated"), (None, "baseline")):
        source = ["--dataset-config", config] if config else ["--dataset", "loveda"]
        args = [
            "eval",
            *source,
            "--data-root",
            root,
            "--split",
            split,
            "--model",
            tiny_dir,
            "-o",
            tmp_path / which,
        ]
        code, err = run_cli(monkeypatch, capsys, *args)
        assert code == 0, err
        metrics = json.loads((tmp_path / which / "metrics.json").read_text())
        assert metrics["num_images"] == 2
        assert metrics["mIoU"] == reported[which]["mIoU"]
        # class by class (the calibrated file may name a class by another of its names)
        for got, values in zip(
            metrics["per_class"].values(), reported[which]["per_class"].values(), strict=True
        ):
            assert got["IoU"] == values["IoU"] or (
                got["IoU"] != got["IoU"] and values["IoU"] != values["IoU"]
            )


def test_a_second_run_reuses_the_model_pass_and_new_names_run_alone(tiny, tmp_path):
    root = make_dataset("loveda", tmp_path, num_images=3, size=(32, 40))
    protocol = load_protocol("loveda")
    segmentor = Segmentor(tiny, protocol.vocabulary, settings=protocol.settings)
    data = SegmentationDataset(protocol, root)
    options = CalibrateOptions(holdout=0.34, folds=0, stride=2, confidences=(0.5,))
    first = calibrate(
        segmentor, data, build_pool(protocol.vocabulary, builtin=False), tmp_path / "o", options
    )
    assert first["cost"]["images_run"] == 3
    cache = tmp_path / "o" / "cache" / first["pass_key"]
    before = {p: p.stat().st_mtime_ns for p in cache.rglob("*.npz")}
    stale = next(cache.glob("*/target.npz")).parent / ".road-x.part.npz"  # what a killed run leaves
    stale.write_bytes(b"half")
    again = calibrate(
        segmentor, data, build_pool(protocol.vocabulary, builtin=False), tmp_path / "o", options
    )
    assert again["cost"]["images_run"] == 0 and again["headline"] == first["headline"]
    assert not stale.exists()
    wider = build_pool(protocol.vocabulary, {"road": ["street"]}, builtin=False)
    third = calibrate(segmentor, data, wider, tmp_path / "o", options)
    assert third["cost"]["images_run"] == 3
    after = {p: p.stat().st_mtime_ns for p in cache.rglob("*.npz")}
    assert {p for p in after if p not in before} == {p for p in after if p.name.startswith("street-")}
    assert all(after[p] == t for p, t in before.items())  # nothing cached was recomputed
    # a corrupt entry is named, discarded and recomputed
    victim = next(p for p in cache.rglob("road-*.npz"))
    victim.write_bytes(b"not a cache entry")
    fourth = calibrate(segmentor, data, wider, tmp_path / "o", options)
    assert fourth["cost"]["images_run"] == 1 and fourth["headline"] == third["headline"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--holdout", "1"], "--holdout must be a share in [0, 1)"),
        (["--folds", "1"], "--folds must be 0 (none) or at least 2"),
        (["--holdout", "0", "--folds", "0"], "leave nothing to report on"),
        (["--sample-stride", "0"], "--sample-stride must be >= 1"),
        (["--objective", "dice"], "--objective must be one of miou, class-iou"),
        (["--thresholds", "0.1:x"], "--thresholds '0.1:x': give numbers"),
        (["--confidences", "1.5"], "--confidences must list numbers in [0, 1]"),
        (["--folds", "9"], "--folds 9 is more than the 3 images"),
    ],
)
def test_bad_options_get_one_sentence_and_no_output(monkeypatch, capsys, tiny_dir, tmp_path, extra, message):
    root = make_dataset("loveda", tmp_path, num_images=3, size=(32, 40))
    args = ["calibrate", "--dataset", "loveda", "--data-root", root, "--model", tiny_dir, *extra]
    code, err = run_cli(monkeypatch, capsys, *args, "-o", tmp_path / "out")
    assert code == 1 and message in err, err
    assert not (tmp_path / "out" / "calibration.json").exists()


def test_one_image_is_not_enough(tiny, tmp_path):
    root = make_dataset("loveda", tmp_path, num_images=1, size=(32, 40))
    protocol = load_protocol("loveda")
    segmentor = Segmentor(tiny, protocol.vocabulary, settings=protocol.settings)
    with pytest.raises(InputError, match="at least 2 labelled images"):
        calibrate(
            segmentor, SegmentationDataset(protocol, root), build_pool(protocol.vocabulary), tmp_path / "o"
        )


@pytest.mark.slow
def test_two_gloo_processes_equal_one(tiny_dir, tmp_path):
    root = make_dataset("loveda", tmp_path, num_images=4, size=(32, 40))
    base = [
        "-m",
        "ovearth",
        "calibrate",
        "--dataset",
        "loveda",
        "--data-root",
        str(root),
        "--model",
        str(tiny_dir),
    ]
    base += ["--max-names", "2", "--confidences", "0.5", "--folds", "2", "--holdout", "0.25"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    two = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *base]
    done = subprocess.run(
        [*two, "-o", str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    one = [sys.executable, *base, "-o", str(tmp_path / "one")]
    subprocess.run(one, env=env, check=True, capture_output=True, timeout=600)
    results = [json.loads((tmp_path / name / "calibration.json").read_text()) for name in ("two", "one")]
    assert results[0]["headline"] == results[1]["headline"]
    assert [s["best"] for s in results[0]["splits"]] == [s["best"] for s in results[1]["splits"]]
    key = results[0]["pass_key"]
    assert sorted(p.name for p in (tmp_path / "two" / "cache" / key).iterdir()) == sorted(
        p.name for p in (tmp_path / "one" / "cache" / key).iterdir()
    )


def test_calibrate_recovers_a_planted_confidence(tiny, tmp_path):
    """Instance term only (so the confidence matters): labels made at 0.27 are found at 0.27."""
    settings = SegmentSettings(use_semantic=False, prob_thd=0.05, bg_idx=0, confidence_threshold=0.2)
    vocabulary = Vocabulary.parse("background;building;road")
    root = tmp_path / "data"
    (root / "img").mkdir(parents=True)
    (root / "ann").mkdir()
    truth = Segmentor(tiny, vocabulary, settings=settings.replace(confidence_threshold=0.27))
    for i in range(8):
        rgb = make_image(10 + i, 40, 48)
        Image.fromarray(rgb).save(root / "img" / f"t{i}.png")
        Image.fromarray(truth.predict(rgb).labels).save(root / "ann" / f"t{i}.png")
    layout = {"images": "img", "labels": "ann", "image_suffix": ".png", "label_suffix": ".png"}
    (tmp_path / "p.yaml").write_text(
        protocol_yaml("p", vocabulary, settings) + yaml.safe_dump({"layout": layout})
    )
    protocol = load_protocol(tmp_path / "p.yaml")
    segmentor = Segmentor(tiny, protocol.vocabulary, settings=protocol.settings)
    options = CalibrateOptions(
        confidences=(0.2, 0.27, 0.3), thresholds=(0.05,), stride=1, holdout=0.25, folds=0
    )
    pool = build_pool(protocol.vocabulary, builtin=False)
    result = calibrate(segmentor, SegmentationDataset(protocol, root), pool, tmp_path / "out", options)
    best = result["splits"][0]["best"]
    assert result["confidence_matters"] and best["confidence"] == 0.27
    assert result["headline"]["calibrated_mIoU"] == 100.0 and result["headline"]["baseline_mIoU"] < 80
    assert load_protocol(tmp_path / "out" / "p_calibrated.yaml").settings.confidence_threshold == 0.27
