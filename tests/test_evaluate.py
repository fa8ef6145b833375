"""Evaluation: exact aggregation, cache and resume, torchrun sharding, bad images."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ovearth import Segmentor
from ovearth.data.datasets import SegmentationDataset
from ovearth.data.protocols import load_protocol
from ovearth.metrics import compute_metrics, confusion_matrix
from ovearth.run.evaluate import EvalOptions, evaluate
from tests.conftest import run_cli
from tests.data.make_synthetic import corrupt, make_dataset

PROTOCOL = "loveda"  # reduce_zero_label, synonyms: the demanding case


def segmentor_for(tiny, **overrides):
    protocol = load_protocol(PROTOCOL)
    # thresholds low enough that the tiny model predicts several classes
    settings = protocol.settings.replace(**{"confidence_threshold": 0.25, "prob_thd": 0.1, **overrides})
    return Segmentor(tiny, protocol.vocabulary, settings=settings)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_dataset(PROTOCOL, tmp_path_factory.mktemp("data"), num_images=6, size=(48, 64))


def same_metrics(a, b):
    for key in ("mIoU", "mAcc", "aAcc", "mFscore"):
        assert a[key] == pytest.approx(b[key], abs=1e-9, nan_ok=True), key
    assert json.dumps(a["per_class"], sort_keys=True) == json.dumps(b["per_class"], sort_keys=True)


def test_metrics_are_accumulated_over_the_set(tiny, data_root, tmp_path):
    seg = segmentor_for(tiny)
    dataset = SegmentationDataset(PROTOCOL, data_root)
    calls = []
    result = evaluate(seg, dataset, tmp_path, progress=lambda d, n, m: calls.append((d, n, m)))
    total = sum(confusion_matrix(seg.predict(s.load_image().rgb).labels, s.load_label(), 7) for s in dataset)
    same_metrics(result.metrics, compute_metrics(total, seg.vocabulary.labels))
    predicted = [name for name, v in result.per_class.items() if v["IoU"] > 0]
    assert len(predicted) >= 3 and 0 < result.miou < 100  # the tiny model predicts several classes
    assert [c[0] for c in calls] == list(range(1, 7)) and calls[-1][2] == pytest.approx(
        result.miou, nan_ok=True
    )
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert result.out_dir == tmp_path and set(written) == set(result.metrics)  # the result is the file
    same_metrics(written, result.metrics)
    assert written["model"]["fingerprint"] == tiny.fingerprint and written["settings"]["prob_thd"] == 0.1
    assert set(written["per_class"]["building"]) >= {"IoU", "Acc", "Fscore"}
    assert all((tmp_path / f).exists() for f in ("metrics.md", "metrics.csv", "per_class_iou.png"))


def test_cache_is_reused_and_a_changed_setting_is_not(tiny, data_root, tmp_path):
    dataset = SegmentationDataset(PROTOCOL, data_root)
    first = evaluate(segmentor_for(tiny), dataset, tmp_path)
    again = evaluate(segmentor_for(tiny), dataset, tmp_path)
    assert (first.computed_images, again.computed_images) == (6, 0)
    same_metrics(first.metrics, again.metrics)
    changed = evaluate(segmentor_for(tiny, prob_thd=0.45), dataset, tmp_path)
    assert changed.computed_images == 6 and changed.run_key != first.run_key
    refined = evaluate(segmentor_for(tiny, refine="smooth:a=0.2"), dataset, tmp_path)
    assert refined.computed_images == 6
    plain = evaluate(segmentor_for(tiny, prompt_form="transformers"), dataset, tmp_path)
    assert plain.computed_images == 6 and plain.miou != first.miou
    assert len(list((tmp_path / "cache").iterdir())) == 4
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["settings"]["prompt_form"] == "transformers"


def test_limit_and_saved_predictions(tiny, data_root, tmp_path):
    result = evaluate(
        segmentor_for(tiny),
        SegmentationDataset(PROTOCOL, data_root, limit=2),
        tmp_path,
        EvalOptions(save_predictions=True),
    )
    assert result.num_images == 2
    assert len(list((tmp_path / "predictions").rglob("*.png"))) == 2


# Subprocess runs are compared with subprocess runs under the same thread count: results
# must be bit-identical, and labels at near-ties could flip between differently set-up processes.
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def cli_eval(tiny_dir, root, out, *extra):
    return [
        sys.executable,
        "-m",
        "ovearth",
        "eval",
        "--dataset",
        PROTOCOL,
        "--data-root",
        str(root),
        "--model",
        str(tiny_dir),
        "--confidence-threshold",
        "0.25",
        "--prob-thd",
        "0.1",
        "-o",
        str(out),
        *extra,
    ]


def finished(out: Path) -> list[Path]:
    """Cache entries written whole (a kill can leave a ``.<name>.<random>.part.npz`` being written)."""
    return [p for p in out.glob("cache/*/*.npz") if not p.name.startswith(".")]


@pytest.mark.slow
def test_killed_run_resumes_to_identical_metrics(tiny, tiny_dir, tmp_path):
    root = make_dataset(PROTOCOL, tmp_path / "data", num_images=40, size=(40, 48), seed=3)
    out = tmp_path / "out"
    process = subprocess.Popen(cli_eval(tiny_dir, root, out), stderr=subprocess.DEVNULL, env=ENV)
    deadline = time.time() + 300  # generous: a loaded machine starts python slowly
    while time.time() < deadline and len(finished(out)) < 3:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = len(finished(out))
    assert 3 <= done_before < 40, "the run must be killed mid-way"
    assert not (out / "metrics.json").exists()
    subprocess.run(cli_eval(tiny_dir, root, out), check=True, stderr=subprocess.DEVNULL, timeout=300, env=ENV)
    resumed = json.loads((out / "metrics.json").read_text())
    assert resumed["computed_images"] == 40 - done_before
    assert not list(out.glob("cache/*/.*part*"))
    fresh = tmp_path / "fresh"
    subprocess.run(
        cli_eval(tiny_dir, root, fresh), check=True, stderr=subprocess.DEVNULL, timeout=300, env=ENV
    )
    uninterrupted = json.loads((fresh / "metrics.json").read_text())
    assert uninterrupted["computed_images"] == 40
    same_metrics(resumed, uninterrupted)


@pytest.mark.slow
def test_two_gloo_processes_equal_one(tiny_dir, data_root, tmp_path):
    command = cli_eval(tiny_dir, data_root, tmp_path / "two")
    command[1:3] = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "ovearth"]
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two["world_size"] == 2 and two["num_images"] == 6
    subprocess.run(
        cli_eval(tiny_dir, data_root, tmp_path / "one"), check=True, env=ENV, capture_output=True, timeout=300
    )
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert one["world_size"] == 1
    same_metrics(two, one)


def test_bad_images_stop_or_are_skipped_and_listed(monkeypatch, capsys, tiny_dir, tmp_path):
    root = make_dataset(PROTOCOL, tmp_path / "data", num_images=4, size=(40, 48))
    stem = sorted(p.stem for p in (root / load_protocol(PROTOCOL).layout.images).rglob("*.png"))[0]
    label = corrupt(root, PROTOCOL, stem, "missing_label")
    base = ["eval", "--dataset", PROTOCOL, "--data-root", root, "--model", tiny_dir]
    code, err = run_cli(monkeypatch, capsys, *base, "-o", tmp_path / "stop")
    assert code == 1 and str(label) in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "stop" / "metrics.json").exists()
    code, err = run_cli(monkeypatch, capsys, *base, "--skip-bad", "-o", tmp_path / "skip")
    assert code == 0, err
    result = json.loads((tmp_path / "skip" / "metrics.json").read_text())
    assert result["num_images"] == 3 and result["skipped"][0]["image"] == stem
    assert "label file missing" in result["skipped"][0]["problem"]


def test_user_protocol_file_is_validated(monkeypatch, capsys, tiny_dir, data_root, tmp_path):
    text = Path(load_protocol(PROTOCOL).source).read_text()
    good, bad = tmp_path / "mine.yaml", tmp_path / "bad.yaml"
    good.write_text(text.replace("name: loveda", "name: mine"))
    bad.write_text(text.replace("  prob_thd:", "  prob_threshold:"))
    code, err = run_cli(
        monkeypatch,
        capsys,
        "eval",
        "--dataset-config",
        bad,
        "--data-root",
        data_root,
        "--model",
        tiny_dir,
        "-o",
        tmp_path / "o",
    )
    assert code == 1 and "bad.yaml" in err and "segment.prob_threshold" in err
    code, err = run_cli(
        monkeypatch,
        capsys,
        "eval",
        "--dataset-config",
        good,
        "--data-root",
        data_root,
        "--model",
        tiny_dir,
        "--limit",
        "1",
        "-o",
        tmp_path / "o",
    )
    assert code == 0 and json.loads((tmp_path / "o" / "metrics.json").read_text())["dataset"] == "mine"
    assert np.isfinite(json.loads((tmp_path / "o" / "metrics.json").read_text())["aAcc"])


def test_plain_progress_lines_in_logs(monkeypatch, capsys, tiny_dir, data_root, tmp_path):
    monkeypatch.setenv("OVEARTH_PROGRESS_SECONDS", "0")
    args = ("eval", "--dataset", PROTOCOL, "--data-root", data_root, "--model", tiny_dir, "-o", tmp_path)
    code, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.startswith(f"eval {PROTOCOL}:")]
    assert lines[0].startswith(f"eval {PROTOCOL}: 1/6 (17 %), ") and ", running mIoU " in lines[0]
    assert lines[-1].startswith(f"eval {PROTOCOL}: 6/6 (100 %)")
