"""Where SAM 3's decoder looks, per class, on one image: heatmaps and the raw maps.

For each class (its first name as the prompt), on the whole image as one view resized to
the model size, :class:`~ovearth.model.attention.DecoderAttention` records every decoder
layer's image cross-attention ``[H, Q + 1, N]`` (row 0: the presence token). The model
is probed as it is, without the segmentor's refinement. ``attention_report`` writes:

* ``attention_<class>.png``: three maps upsampled bilinearly to the (displayed) image
  and overlaid on it: ``queries`` (the ``w_patch`` of mean over layers, object queries
  and heads), ``scored`` (score-weighted over the queries kept at the segmentor's
  ``confidence_threshold``) and ``presence`` (the presence token's row); the colour
  scale runs from the map's minimum to its maximum, in units of the weight times ``N``
  (1 = uniform attention), and the colour's opacity grows with the weight;
* ``attention_<class>_layers.png``: for the ``top`` highest-scoring queries, a mosaic
  with rows = decoder layers and columns = heads, each cell the query's map on the token
  grid scaled to its own maximum;
* ``attention_maps.safetensors``: ``maps [L, K, H, Q + 1, N]`` in float16 (the real
  model's maps take 6 x 8 x 201 x 5184 x 2 bytes = 100 MB per class), ``scores [K, Q]``,
  ``presence [K]``, ``grid [2]`` (int32 ``h, w``) and the three aggregations
  ``weights_<kind> [K, N]`` in float32; metadata: class names (json) and image size;
* ``attention.json``: per class the presence, the kept count, the top queries and the
  five patches with the largest ``w_patch``.

Query indices count object queries from 0 (row ``index + 1`` of the maps).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from torch import Tensor

from ..data.atomic import atomic_path, write_text_atomic
from ..model.attention import KINDS, DecoderAttention
from ..model.preprocess import preprocess, to_chw_uint8
from ..segment.segmentor import Segmentor

#: Longest side of the image as shown in the overlays (smaller images are enlarged to MIN).
MAX_DISPLAY_SIDE, MIN_DISPLAY_SIDE = 768, 256
PANELS = ("queries", "scored", "presence")
TITLES = {
    "queries": "queries: w_patch (mean L, Q, heads)",
    "scored": "scored: score-weighted kept queries",
    "presence": "presence token",
}


@torch.inference_mode()
def attention_tensors(segmentor: Segmentor, image: np.ndarray) -> dict[str, Tensor]:
    """Decoder cross-attention of every class's first name on the whole image.

    Classes run through fusion and decoder ``segmentor.prompt_batch`` at a time; each
    batch's maps move to the CPU in float16 before the next one runs.

    Args:
        segmentor: gives the model, the vocabulary and ``confidence_threshold``.
        image: ``[H, W, 3]`` uint8.

    Returns:
        ``maps [L, K, H, Q + 1, N]`` float16, ``scores [K, Q]``, ``presence [K]``,
        ``weights_<kind> [K, N]`` (float32) and ``grid [2]`` int32, all on the CPU.

    """
    stages = segmentor.stages
    view = to_chw_uint8(image).to(stages.device)
    vision = stages.encode_images(preprocess(view, stages.image_size, stages.dtype)[None])
    vocabulary = segmentor.vocabulary
    first = [vocabulary.names.index(names[0]) for names in vocabulary.classes]
    text = segmentor.text_features
    parts: dict[str, list[Tensor]] = {}
    grid = (0, 0)
    for start in range(0, len(first), segmentor.prompt_batch):
        fused = stages.fuse(vision, text.select(first[start : start + segmentor.prompt_batch]))
        grid = fused.grid
        with DecoderAttention(stages.model, keep_full=True) as probe:
            scores, presence = stages.decode(fused).scores()
        keep = scores > segmentor.settings.confidence_threshold
        found = {"maps": probe.maps().half(), "scores": scores.float(), "presence": presence.float()}
        for kind in KINDS:
            found[f"weights_{kind}"] = probe.patch_weights(kind, scores.float(), keep)
        for key, value in found.items():
            parts.setdefault(key, []).append(value.cpu())
    result = {key: torch.cat(values, dim=1 if key == "maps" else 0) for key, values in parts.items()}
    result["grid"] = torch.tensor(grid, dtype=torch.int32)
    return result


def attention_report(segmentor: Segmentor, image: np.ndarray, out_dir: str | Path, top: int = 3) -> dict:
    """Write the attention figures, maps and summary of one image (see the module docstring).

    Args:
        segmentor: the vocabulary, model and ``confidence_threshold`` to probe.
        image: ``[H, W, 3]`` uint8 RGB.
        out_dir: output folder (created).
        top: highest-scoring queries per class shown layer by layer and listed.

    Returns:
        The summary written to ``attention.json``.

    Raises:
        InputError: the image is not ``[H, W, 3]`` uint8.

    """
    out = Path(out_dir)
    arrays = attention_tensors(segmentor, image)
    labels, vocabulary = segmentor.vocabulary.labels, segmentor.vocabulary
    threshold = segmentor.settings.confidence_threshold
    layers, _, heads, rows, _ = arrays["maps"].shape
    grid = tuple(int(v) for v in arrays["grid"])
    stems = _file_stems(labels)
    per_class: dict[str, Any] = {}
    for k, label in enumerate(labels):
        scores = arrays["scores"][k]
        order = scores.argsort(descending=True)[: min(top, scores.numel())].tolist()
        w_patch = arrays["weights_queries"][k]
        best = w_patch.argsort(descending=True)[:5].tolist()
        per_class[label] = {
            "prompt": vocabulary.classes[k][0],
            "presence": float(arrays["presence"][k]),
            "kept": int((scores > threshold).sum()),
            "top_queries": [{"index": j, "score": float(scores[j])} for j in order],
            "top_patches": [
                {"row": i // grid[1], "col": i % grid[1], "weight": float(w_patch[i])} for i in best
            ],
            "figures": [f"attention_{stems[k]}.png", f"attention_{stems[k]}_layers.png"],
        }
    summary = {
        "image_size": list(image.shape[:2]),
        "model_size": segmentor.stages.image_size,
        "grid": list(grid),
        "layers": layers,
        "heads": heads,
        "queries": rows - 1,
        "confidence_threshold": threshold,
        "maps": "attention_maps.safetensors: maps [L, K, H, Q+1, N] float16, row 0 the presence token",
        "per_class": per_class,
    }
    metadata = {
        "classes": json.dumps(labels),
        "prompts": json.dumps([names[0] for names in vocabulary.classes]),
        "image_size": json.dumps(list(image.shape[:2])),
        "model_size": str(segmentor.stages.image_size),
        "confidence_threshold": str(threshold),
        "layout": "maps [L, K, H, Q+1, N] float16 (row 0 of Q+1: presence token); scores [K, Q]",
    }
    with atomic_path(out / "attention_maps.safetensors") as temp:
        save_file({k: v.contiguous() for k, v in arrays.items()}, str(temp), metadata=metadata)
    write_text_atomic(out / "attention.json", json.dumps(summary, indent=2) + "\n")
    for k, label in enumerate(labels):
        info = per_class[label]
        weights = {kind: arrays[f"weights_{kind}"][k] for kind in KINDS}
        _overlay_figure(out / info["figures"][0], image, weights, grid, label, info, threshold)
        _layers_figure(out / info["figures"][1], arrays["maps"][:, k], grid, label, info)
    return summary


def _file_stems(labels: list[str]) -> list[str]:
    """Filename-safe, distinct stems for the class names."""
    stems: list[str] = []
    for k, label in enumerate(labels):
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("._") or f"class{k}"
        stems.append(stem if stem.lower() not in {s.lower() for s in stems} else f"{stem}_{k}")
    return stems


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _overlay_figure(
    path: Path,
    image: np.ndarray,
    weights: dict[str, Tensor],
    grid: tuple[int, int],
    label: str,
    info: dict,
    threshold: float,
) -> None:
    plt = _pyplot()
    height, width = image.shape[:2]
    scale = min(max(max(height, width), MIN_DISPLAY_SIDE), MAX_DISPLAY_SIDE) / max(height, width)
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    shown = np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))
    dpi = 100
    fig, axes = plt.subplots(1, 3, figsize=(3 * (size[1] / dpi + 0.9), size[0] / dpi + 0.9), dpi=dpi)
    tokens = grid[0] * grid[1]
    for ax, kind in zip(axes, PANELS, strict=True):
        heat = F.interpolate(
            weights[kind].float().view(1, 1, *grid) * tokens, size=size, mode="bilinear", align_corners=False
        )[0, 0].numpy()
        low, high = float(heat.min()), max(float(heat.max()), float(heat.min()) + 1e-6)
        ax.imshow(shown)
        # opacity grows with the weight, so the image stays visible where attention is low
        drawn = ax.imshow(
            heat, cmap="inferno", alpha=0.15 + 0.6 * (heat - low) / (high - low), vmin=low, vmax=high
        )
        colorbar = fig.colorbar(drawn, ax=ax, fraction=0.046, pad=0.02)
        colorbar.ax.tick_params(labelsize=6)
        colorbar.set_label("x uniform", fontsize=6)
        title = TITLES[kind] + (" (none kept: = queries)" if kind == "scored" and not info["kept"] else "")
        ax.set_title(title, fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        f"{label}: presence {info['presence']:.3f}, {info['kept']} queries kept (score > {threshold:g})",
        fontsize=9,
    )
    fig.tight_layout()
    with atomic_path(path) as temp:
        fig.savefig(temp, format="png", dpi=dpi)
    plt.close(fig)


def _layers_figure(path: Path, maps: Tensor, grid: tuple[int, int], label: str, info: dict) -> None:
    """``maps [L, H, Q + 1, N]``: one L x H mosaic per top query, cells scaled to their max."""
    plt = _pyplot()
    layers, heads = maps.shape[0], maps.shape[1]
    gh, gw = grid
    queries = info["top_queries"]
    dpi = 110
    panel = (max(2.4, 1.1 * heads * (gw + 1) / dpi), max(2.0, 1.1 * layers * (gh + 1) / dpi))
    fig, axes = plt.subplots(
        1, max(1, len(queries)), figsize=(panel[0] * max(1, len(queries)), panel[1] + 0.8), squeeze=False
    )
    for ax, query in zip(axes[0], queries, strict=False):
        cells = maps[:, :, query["index"] + 1].float().view(layers, heads, gh, gw)
        cells = cells / cells.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
        padded = F.pad(cells, (0, 1, 0, 1), value=float("nan"))  # a blank line between cells
        mosaic = padded.permute(0, 2, 1, 3).reshape(layers * (gh + 1), heads * (gw + 1))[:-1, :-1]
        ax.imshow(mosaic.numpy(), cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_xticks([h * (gw + 1) + gw / 2 - 0.5 for h in range(heads)], [f"h{h}" for h in range(heads)])
        ax.set_yticks([n * (gh + 1) + gh / 2 - 0.5 for n in range(layers)], [f"L{n}" for n in range(layers)])
        ax.tick_params(labelsize=6, length=0)
        ax.set_title(f"query {query['index']}, score {query['score']:.3f}", fontsize=8)
    for ax in axes[0][len(queries) :]:
        ax.axis("off")
    fig.suptitle(
        f"{label}: top queries, rows = decoder layers, columns = heads (each cell to its max)", fontsize=8
    )
    fig.tight_layout()
    with atomic_path(path) as temp:
        fig.savefig(temp, format="png", dpi=dpi)
    plt.close(fig)
