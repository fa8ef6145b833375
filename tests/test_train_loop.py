"""The training loop: the loss goes down, a stopped run resumes exactly, adapters reach the commands."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from ovearth import InputError, load_model
from ovearth.data.datasets import SegmentationDataset, read_label
from ovearth.data.protocols import load_protocol
from ovearth.run.ablate import AblationSetting, load_grid, run_ablation
from ovearth.segment.segmentor import Prediction
from ovearth.train.loop import train
from ovearth.train.pseudo import confident_labels
from ovearth.train.settings import TrainSettings
from tests.conftest import run_cli
from tests.data.make_synthetic import make_dataset

PROTOCOL = load_protocol("loveda")
#: every term active on the tiny model: its query scores sit near 0.2
SEGMENT = PROTOCOL.settings.replace(confidence_threshold=0.1)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_dataset("loveda", tmp_path_factory.mktemp("train-data"), num_images=2, size=(48, 56))


def _rows(folder):
    return list(csv.DictReader((folder / "losses.csv").open()))


def _run(tiny_dir, root, out, stop_after=None, restart=False, **settings):
    def progress(stage, done, total, row):
        if stage == "train" and done == stop_after:
            raise KeyboardInterrupt

    loaded = load_model(tiny_dir)
    dataset = SegmentationDataset(PROTOCOL, root, require_labels=not settings.get("pseudo_labels", False))
    run = TrainSettings(**settings)
    return loaded, train(loaded, dataset, out, run, segment=SEGMENT, restart=restart, progress=progress)


@pytest.mark.slow
def test_combined_loss_decreases_over_50_steps(tiny_dir, data_root, tmp_path):
    settings = dict(trainable="fusion", steps=50, batch=2, lr=1e-3, warmup=0, save_every=50)
    loaded, summary = _run(tiny_dir, data_root, tmp_path, **settings)
    rows = _rows(tmp_path)
    assert [int(r["step"]) for r in rows] == list(range(1, 51))
    first, last = rows[:5], rows[-5:]

    def mean(part, key):
        return sum(float(r[key]) for r in part) / len(part)

    assert mean(last, "total") < 0.9 * mean(first, "total")
    assert mean(last, "seg") < 0.95 * mean(first, "seg")  # not only the self-supervised terms
    assert all(float(r["contrast"]) > 0 for r in first) and float(rows[0]["masks"]) > 0
    assert summary["steps_done"] == 50 and summary["trainable_parameters"] == 12832
    assert (tmp_path / "losses.png").stat().st_size > 5000
    meta = json.loads((tmp_path / "adapter" / "adapter.json").read_text())
    assert (
        meta["step"] == 50
        and meta["trainable"] == "fusion"
        and meta["base_fingerprint"] == loaded.fingerprint
    )
    # the model passed in is left as it was
    fresh = load_model(tiny_dir)
    assert all(torch.equal(v, fresh.model.state_dict()[k]) for k, v in loaded.model.state_dict().items())
    assert not any(p.requires_grad for p in loaded.model.parameters())


def test_a_resumed_run_continues_from_the_same_step_with_the_same_loss(tiny_dir, data_root, tmp_path):
    settings = dict(trainable="lora", steps=6, batch=2, lr=3e-3, warmup=2, save_every=3)
    _run(tiny_dir, data_root, tmp_path / "whole", **settings)
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_dir, data_root, tmp_path / "stopped", stop_after=5, **settings)
    assert [int(r["step"]) for r in _rows(tmp_path / "stopped")] == [1, 2, 3]  # last checkpoint: step 3
    assert torch.load(tmp_path / "stopped" / "state.pt", weights_only=True)["step"] == 3
    _run(tiny_dir, data_root, tmp_path / "stopped", **settings)
    whole, resumed = _rows(tmp_path / "whole"), _rows(tmp_path / "stopped")
    assert [int(r["step"]) for r in resumed] == list(range(1, 7))
    for a, b in zip(whole, resumed, strict=True):
        for key in ("lr", "total", "seg", "attn", "contrast", "boundary", "masks"):
            assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-5, abs=1e-7), (a["step"], key)
    from safetensors.torch import load_file

    end_a = load_file(tmp_path / "whole" / "adapter" / "adapter.safetensors")
    end_b = load_file(tmp_path / "stopped" / "adapter" / "adapter.safetensors")
    for name, value in end_a.items():
        torch.testing.assert_close(end_b[name], value, atol=1e-6, rtol=1e-5)


def test_a_different_run_in_the_same_folder_is_refused(tiny_dir, data_root, tmp_path):
    _run(tiny_dir, data_root, tmp_path, steps=1, save_every=1)
    with pytest.raises(InputError, match=r"different settings \(lr 0.0001 -> 0.001\).*--restart"):
        _run(tiny_dir, data_root, tmp_path, steps=1, lr=1e-3)
    _, summary = _run(tiny_dir, data_root, tmp_path, steps=1, lr=1e-3, restart=True)
    assert summary["settings"]["lr"] == 1e-3


def test_confident_labels_rule():
    logits = torch.tensor([[[0.9, 0.2], [0.5, 0.1]], [[0.1, 0.8], [0.6, 0.0]]])  # [K=2, 2, 2]
    valid = np.array([[True, True], [True, False]])
    prediction = Prediction(np.zeros((2, 2), np.uint8), logits, torch.zeros(2), ["a", "b"], valid)
    assert confident_labels(prediction, 0.55).tolist() == [[0, 1], [1, 255]]


def test_self_training_needs_no_labels(tiny_dir, data_root, tmp_path):
    root = tmp_path / "unlabelled"
    (root / PROTOCOL.layout.images).parent.mkdir(parents=True)
    (data_root / PROTOCOL.layout.images).rename(root / PROTOCOL.layout.images)  # images only
    try:
        out = tmp_path / "run"
        _, summary = _run(
            tiny_dir, root, out, pseudo_labels=True, pseudo_threshold=0.3, steps=2, save_every=2
        )
        labels = sorted((out / "pseudo_labels").rglob("*.png"))
        assert len(labels) == 2 and 0 < summary["pseudo_label_coverage"] < 1
        label = read_label(labels[0])
        assert set(np.unique(label)) <= set(range(len(PROTOCOL.vocabulary))) | {255}
        assert len(list((out / "pseudo_labels" / "overlays").glob("*.jpg"))) == 2
        stamp = labels[0].stat().st_mtime_ns
        _run(
            tiny_dir, root, out, pseudo_labels=True, pseudo_threshold=0.3, steps=2, save_every=2, restart=True
        )
        assert labels[0].stat().st_mtime_ns == stamp  # same model and rule: reused
    finally:
        (root / PROTOCOL.layout.images).rename(data_root / PROTOCOL.layout.images)


def test_adapter_in_segment_eval_and_ablate(monkeypatch, capsys, tiny_dir, data_root, tmp_path):
    run = tmp_path / "run"
    code, err = run_cli(
        monkeypatch, capsys, "train", "--dataset", "loveda", "--data-root", data_root, "--model", tiny_dir,
        "--device", "cpu", "--trainable", "fusion", "--steps", "3", "--lr", "1e-2", "--warmup", "0",
        "-o", run,
    )  # fmt: skip
    assert code == 0, err
    assert "use --adapter" in err and (run / "adapter" / "adapter.safetensors").is_file()

    image = sorted((data_root / PROTOCOL.layout.images).rglob("*.png"))[0]
    for name, extra in (("plain", []), ("adapted", ["--adapter", run])):
        code, err = run_cli(
            monkeypatch, capsys, "segment", image, "--preset", "loveda", "--model", tiny_dir,
            "--device", "cpu", "--prob-thd", "0", "-o", tmp_path / name, *extra,
        )  # fmt: skip
        assert code == 0, err
    record = json.loads((tmp_path / "adapted" / "run.json").read_text())
    assert "+adapter:" in record["model"]["source"]
    plain = read_label(tmp_path / "plain" / f"{image.stem}_labels.png")
    adapted_labels = read_label(tmp_path / "adapted" / f"{image.stem}_labels.png")
    assert not np.array_equal(plain, adapted_labels)  # the adapter changes the model's output

    for name, extra in (("eval-plain", []), ("eval-adapted", ["--adapter", run])):
        code, err = run_cli(
            monkeypatch, capsys, "eval", "--dataset", "loveda", "--data-root", data_root, "--model", tiny_dir,
            "--device", "cpu", "-o", tmp_path / name, *extra,
        )  # fmt: skip
        assert code == 0, err
    keys = [next((tmp_path / n / "cache").iterdir()).name for n in ("eval-plain", "eval-adapted")]
    assert keys[0] != keys[1]  # adapted results never share a cache with plain ones

    loaded = load_model(tiny_dir)
    grid = [AblationSetting("baseline"), AblationSetting("adapter", adapter=str(run))]
    results = run_ablation(loaded, {"loveda": data_root}, grid, tmp_path / "ablate")
    plain_miou = json.loads((tmp_path / "eval-plain" / "metrics.json").read_text())["mIoU"]
    adapted_miou = json.loads((tmp_path / "eval-adapted" / "metrics.json").read_text())["mIoU"]
    assert results["loveda"]["baseline"]["mIoU"] == pytest.approx(plain_miou, abs=1e-6)
    assert results["loveda"]["adapter"]["mIoU"] == pytest.approx(adapted_miou, abs=1e-6)
    rows = list(csv.DictReader((tmp_path / "ablate" / "ablation.csv").open()))
    assert rows[1]["adapter"] == str(run)
    fresh = load_model(tiny_dir).model.state_dict()
    assert all(torch.equal(v, fresh[k]) for k, v in loaded.model.state_dict().items())  # weights restored

    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(f"settings:\n  - {{adapter: '{tmp_path / 'missing'}'}}\n")
    with pytest.raises(Exception, match="no adapter here"):
        load_grid(grid_file)


def test_bad_adapter_exits_2_in_one_sentence_without_output(
    monkeypatch, capsys, tiny_dir, data_root, tmp_path
):
    image = sorted((data_root / PROTOCOL.layout.images).rglob("*.png"))[0]
    code, err = run_cli(
        monkeypatch, capsys, "segment", image, "--preset", "loveda", "--model", tiny_dir, "--device", "cpu",
        "--adapter", tmp_path / "nothing", "-o", tmp_path / "out",
    )  # fmt: skip
    assert code == 2 and "no adapter here" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
