"""What a refinement does to the patch tokens of one image, and to each class's logits.

For each class (its first name as the prompt), at the stage where the refinement
applies (fusion tokens per prompt, or the backbone level), this computes on the whole
image as one view:

* the token energy ``||E_i||_2`` on the grid, before and after refinement;
* the log power spectrum ``log(1 + mean_c |FFT2(E)[c]|^2)``, zero frequency centred
  (``fftshift``), before and after; and the share of energy above half the Nyquist
  radius (``high_freq``), which smoothing and low-pass filters lower;
* the change of the class logit map, refined minus baseline (full segmentation, the
  settings' own views), and the share of pixels whose label changes.

``token_report`` writes ``tokens.png`` (one row per class), ``tokens.safetensors`` (the
arrays) and ``tokens.json`` (the numbers).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor

from ..data.atomic import atomic_path, write_text_atomic
from ..model.preprocess import preprocess, to_chw_uint8
from ..refine import RefineContext, as_grid
from ..refine.first_pass import first_pass
from ..segment.segmentor import Segmentor
from ..segment.views import refine_backbone


def spectrum(grid_tokens: Tensor) -> Tensor:
    """``[B, C, H, W] -> [B, H, W]`` centred log power spectrum, mean over channels."""
    power = torch.fft.fft2(grid_tokens.float()).abs().pow(2).mean(dim=1)
    return torch.fft.fftshift(power, dim=(-2, -1)).log1p()


def high_freq_share(grid_tokens: Tensor) -> Tensor:
    """Share of spectral energy beyond half the Nyquist radius, per batch item ``[B]``."""
    h, w = grid_tokens.shape[-2:]
    fy = torch.fft.fftfreq(h, device=grid_tokens.device)[:, None]
    fx = torch.fft.fftfreq(w, device=grid_tokens.device)[None, :]
    power = torch.fft.fft2(grid_tokens.float()).abs().pow(2).sum(dim=1)
    high = (fy.pow(2) + fx.pow(2)).sqrt() > 0.25
    return (power * high).sum(dim=(-2, -1)) / power.sum(dim=(-2, -1))


@torch.inference_mode()
def token_tensors(segmentor: Segmentor, image: np.ndarray) -> dict[str, Tensor]:
    """Tokens before/after the segmentor's refinement, one row per class (first name).

    Returns:
        ``{"before": [K, C, h, w], "after": [K, C, h, w]}`` (at the backbone stage every
        row is the same single view).

    """
    stages, s = segmentor.stages, segmentor.settings
    view = to_chw_uint8(image).to(stages.device)
    vision = stages.encode_images(preprocess(view, stages.image_size, stages.dtype)[None])
    prompts = [names[0] for names in segmentor.vocabulary.classes]
    first_names = [segmentor.vocabulary.names.index(p) for p in prompts]
    text = segmentor.text_features.select(first_names)
    pipeline = segmentor.pipeline
    if s.refine_at == "backbone":
        before = vision.levels[-1]
        after = before
        if pipeline:
            after = refine_backbone(stages, vision, pipeline, RefineContext(view=view)).levels[-1]
        k = len(prompts)
        return {"before": before.expand(k, -1, -1, -1), "after": after.expand(k, -1, -1, -1)}
    fused = stages.fuse(vision, text)
    after = fused.tokens
    if pipeline:
        context = RefineContext(prompts=prompts, view=view)
        if pipeline.first_pass:
            first_pass(stages.model, pipeline, context, lambda: stages.decode(fused))
        after = pipeline(fused.tokens, fused.grid, context)
    return {"before": as_grid(fused.tokens, fused.grid), "after": as_grid(after, fused.grid)}


def token_report(refined: Segmentor, image: np.ndarray, out_dir: str | Path) -> dict[str, Any]:
    """Write the token and logit comparison of ``refined`` against its unrefined twin.

    Args:
        refined: a segmentor with a refinement (``settings.refine``).
        image: ``[H, W, 3]`` uint8.
        out_dir: output folder.

    Returns:
        The numbers written to ``tokens.json``.

    """
    out = Path(out_dir)
    baseline = Segmentor(refined.loaded, refined.vocabulary, settings=refined.settings.replace(refine=""))
    tokens = token_tensors(refined, image)
    energy = {k: v.float().norm(dim=1) for k, v in tokens.items()}
    spectra = {k: spectrum(v) for k, v in tokens.items()}
    high = {k: high_freq_share(v) for k, v in tokens.items()}
    base_pred, ref_pred = baseline.predict(image), refined.predict(image)
    delta = ref_pred.class_logits - base_pred.class_logits
    labels = refined.vocabulary.labels
    summary = {
        "refine": refined.settings.refine,
        "refine_at": refined.settings.refine_at,
        "refine_for": refined.settings.refine_for,
        "label_change": float((ref_pred.labels != base_pred.labels).mean()),
        "per_class": {
            name: {
                "energy_before": float(energy["before"][k].mean()),
                "energy_after": float(energy["after"][k].mean()),
                "high_freq_before": float(high["before"][k]),
                "high_freq_after": float(high["after"][k]),
                "mean_abs_logit_change": float(delta[k].abs().mean()),
                "presence_before": float(base_pred.presence[k]),
                "presence_after": float(ref_pred.presence[k]),
            }
            for k, name in enumerate(labels)
        },
    }
    arrays = {
        "energy_before": energy["before"],
        "energy_after": energy["after"],
        "spectrum_before": spectra["before"],
        "spectrum_after": spectra["after"],
        "logit_change": delta,
    }
    with atomic_path(out / "tokens.safetensors") as temp:
        save_file({k: v.contiguous().cpu() for k, v in arrays.items()}, str(temp))
    write_text_atomic(out / "tokens.json", json.dumps(summary, indent=2) + "\n")
    _figure(out / "tokens.png", labels, arrays, summary)
    return summary


def _figure(path: Path, labels: list[str], arrays: dict[str, Tensor], summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [
        ("energy_before", "energy before"),
        ("energy_after", "energy after"),
        ("spectrum_before", "log spectrum before"),
        ("spectrum_after", "log spectrum after"),
        ("logit_change", "logit after - before"),
    ]
    fig, axes = plt.subplots(
        len(labels), len(columns), figsize=(2.4 * len(columns), 2.2 * len(labels) + 0.6), squeeze=False
    )
    for k, name in enumerate(labels):
        pair_e = torch.stack([arrays["energy_before"][k], arrays["energy_after"][k]])
        pair_s = torch.stack([arrays["spectrum_before"][k], arrays["spectrum_after"][k]])
        for c, (key, title) in enumerate(columns):
            ax, data = axes[k, c], arrays[key][k].cpu().numpy()
            if key.startswith("energy"):
                ax.imshow(data, cmap="viridis", vmin=float(pair_e.min()), vmax=float(pair_e.max()))
            elif key.startswith("spectrum"):
                ax.imshow(data, cmap="magma", vmin=float(pair_s.min()), vmax=float(pair_s.max()))
            else:
                bound = max(float(np.abs(data).max()), 1e-8)
                ax.imshow(data, cmap="coolwarm", vmin=-bound, vmax=bound)
            ax.set_xticks([])
            ax.set_yticks([])
            if k == 0:
                ax.set_title(title, fontsize=8)
        axes[k, 0].set_ylabel(name, fontsize=8)
    fig.suptitle(
        f"{summary['refine']} @ {summary['refine_at']}/{summary['refine_for']}: "
        f"{100 * summary['label_change']:.1f} % of labels change",
        fontsize=9,
    )
    fig.tight_layout()
    with atomic_path(path) as temp:
        fig.savefig(temp, format="png", dpi=110)
    plt.close(fig)
