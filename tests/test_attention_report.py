"""The per-class attention report: figures, raw maps and summary."""

import json

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from ovearth import Segmentor
from ovearth.errors import InputError
from ovearth.model.preprocess import preprocess
from ovearth.probe.attention_report import attention_report
from tests.conftest import make_image

CLASSES = "road;tree,forest;water"


def first_name_outputs(seg, image):
    """Scores [K, Q] and presence [K] of each class's first name, straight from the stages."""
    stages = seg.stages
    pixels = preprocess(torch.from_numpy(image).permute(2, 0, 1), stages.image_size)[None]
    first = [seg.vocabulary.names.index(names[0]) for names in seg.vocabulary.classes]
    with torch.inference_mode():
        fused = stages.fuse(stages.encode_images(pixels), seg.text_features.select(first))
        return stages.decode(fused).scores()


def test_attention_report(tiny, tmp_path):
    seg = Segmentor(tiny, CLASSES, confidence_threshold=0.27)  # tiny model: scores near 0.25
    image = make_image(5, 150, 200)
    summary = attention_report(seg, image, tmp_path, top=4)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(
        ["attention.json", "attention_maps.safetensors"]
        + [f"attention_{c}{s}.png" for c in ("road", "tree", "water") for s in ("", "_layers")]
    )  # no temporary files left
    assert json.loads((tmp_path / "attention.json").read_text()) == summary

    arrays = load_file(tmp_path / "attention_maps.safetensors")
    layers = len(tiny.model.detr_decoder.layers)
    heads = tiny.model.config.detr_decoder_config.num_attention_heads
    assert arrays["maps"].shape == (layers, 3, heads, 21, 24 * 24) and arrays["maps"].dtype == torch.float16
    torch.testing.assert_close(
        arrays["maps"].float().sum(-1), torch.ones(layers, 3, heads, 21), rtol=0, atol=2e-3
    )
    assert arrays["scores"].shape == (3, 20) and arrays["presence"].shape == (3,)
    assert arrays["grid"].tolist() == [24, 24] and not arrays["grid"].is_floating_point()
    torch.testing.assert_close(arrays["weights_queries"].sum(-1), torch.ones(3))
    with safe_open(tmp_path / "attention_maps.safetensors", "pt") as handle:
        metadata = handle.metadata()
    assert json.loads(metadata["classes"]) == ["road", "tree", "water"]
    assert json.loads(metadata["image_size"]) == [150, 200]

    # presence and kept counts against the segmentor and the stages, computed independently
    scores, presence = first_name_outputs(seg, image)
    predicted = seg.predict(image).presence
    per_class = summary["per_class"]
    for k, name in enumerate(("road", "tree", "water")):
        info = per_class[name]
        assert info["presence"] == pytest.approx(float(presence[k]), abs=1e-5)
        if name != "tree":  # predict takes the max over a class's names (tree, forest)
            assert info["presence"] == pytest.approx(float(predicted[k]), abs=1e-5)
        assert info["kept"] == int((scores[k] > seg.settings.confidence_threshold).sum())
        top = [q["score"] for q in info["top_queries"]]
        assert len(top) == 4 and top == sorted(top, reverse=True)
        assert top[0] == pytest.approx(float(scores[k].max()), abs=1e-5)
        weights = [p["weight"] for p in info["top_patches"]]
        assert len(weights) == 5 and weights == sorted(weights, reverse=True)
        best = info["top_patches"][0]
        assert weights[0] == pytest.approx(float(arrays["weights_queries"][k].max()))
        assert arrays["weights_queries"][k, best["row"] * 24 + best["col"]] == pytest.approx(weights[0])
    kept = [per_class[name]["kept"] for name in ("road", "tree", "water")]
    assert 0 < kept[0] < 20 and kept[2] == 0  # both branches of the scored panel are exercised
    assert not torch.allclose(arrays["weights_scored"][0], arrays["weights_queries"][0])
    torch.testing.assert_close(arrays["weights_scored"][2], arrays["weights_queries"][2])  # none kept

    # PNGs are valid and the overlay grows with the image
    small = {}
    for path in tmp_path.glob("*.png"):
        with Image.open(path) as picture:
            assert picture.format == "PNG" and picture.width > 200
            small[path.name] = picture.size
    large_dir = tmp_path / "large"
    attention_report(seg, make_image(5, 300, 400), large_dir, top=2)
    with Image.open(large_dir / "attention_road.png") as picture:
        big = picture.size
    assert big[0] > small["attention_road.png"][0] and big[1] > small["attention_road.png"][1]


def test_attention_report_rejects_bad_images(tiny, tmp_path):
    with pytest.raises(InputError):
        attention_report(Segmentor(tiny, "road"), make_image(1, 20, 30).astype(float), tmp_path)


def test_attention_command(monkeypatch, capsys, tiny_dir, samples, tmp_path):
    from tests.conftest import run_cli

    code, err = run_cli(
        monkeypatch,
        capsys,
        "attention",
        samples / "RGB.byte.tif",
        "--classes",
        "water;land",
        "--model",
        tiny_dir,
        "--top",
        "2",
        "-o",
        tmp_path,
    )
    assert code == 0, err
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "attention.json",
        "attention_land.png",
        "attention_land_layers.png",
        "attention_maps.safetensors",
        "attention_water.png",
        "attention_water_layers.png",
    ]
    code, err = run_cli(
        monkeypatch,
        capsys,
        "attention",
        samples / "RGB.byte.tif",
        "--classes",
        "water",
        "--model",
        tiny_dir,
        "--top",
        "0",
        "-o",
        tmp_path / "x",
    )
    assert code == 1 and "--top" in err


@pytest.mark.parametrize("prompt_form", ["meta", "transformers"])
def test_attention_maps_use_the_segmentors_prompt_form(tiny, prompt_form):
    from ovearth.probe.attention_report import attention_tensors

    image = make_image(8, 120, 120)
    classes = "road;tree;water"  # one name per class: the maps' presence is each class's presence
    seg = Segmentor(tiny, classes, prompt_form=prompt_form)
    other = Segmentor(tiny, classes, prompt_form="transformers" if prompt_form == "meta" else "meta")
    presence = attention_tensors(seg, image)["presence"]
    torch.testing.assert_close(presence, seg.predict(image).presence, rtol=0, atol=1e-6)
    assert (presence - other.predict(image).presence).abs().max() > 1e-4
