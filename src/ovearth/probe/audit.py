"""Audit: which modules consume the patch tokens that leave SAM 3's fusion encoder.

The consumers run as ``Sam3Model.forward`` calls them (DETR decoder, box head, dot-product
scoring, mask decoder, same arguments) on the fused tokens of a synthetic image, with
forward hooks on every sub-module of ``detr_decoder``, ``dot_product_scoring`` and
``mask_decoder``. No module is named as a consumer in advance; the hooks find them:

1. Reference run: the tokens are an autograd leaf. For every module call's tensor inputs
   the autograd graph says whether the input *is* the tokens (same storage), a *direct*
   function of them (the graph reaches the tokens without passing another module's output;
   normalisation and dropout count as transparent) or reaches them only *via* other modules.
2. Perturbation runs of the same forward: all tokens plus a random delta (an input that
   changes is *derived* from the tokens); one token at a time at three grid cells (the
   token axis is *kept* when the input has a token or grid axis and its largest change sits
   at the perturbed cell, +-1 cell; derived without it is *pooled*, or *indirect* when an
   N-long axis is not token-aligned); an unperturbed repeat gives the noise floor.
3. Read-only: the tokens are compared bit for bit, and their version counter, after the
   decoder and after the mask decoder.
4. Residual: the pixel decoder's coarsest input is compared with ``tokens +
   prompt_cross_attn output`` reshaped to the grid.

Roles follow the receiving module: the ``Sam3Attention`` argument (query, key, value,
attention bias), convolution input, normalisation, projection, or a container's argument.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import Sam3Model

from ..model.features import FusedTokens, VisionFeatures
from ..model.preprocess import preprocess
from ..model.stages import Sam3Stages
from ..model.tokenizer import builtin_tokenizer, tokenize
from .audit_trace import Tracer, token_layout

FUNCTIONAL = ("Sam3Attention", "Conv2d", "Linear", "LayerNorm", "GroupNorm")
PROBE_CELLS = ((0.5, 0.5), (0.25, 0.75), (0.75, 0.2))  # single-token probes, fractions of (h, w)
ROLES = {"query": "attention query", "key": "attention key", "value": "attention value"}
ROLES |= {"attention_mask": "attention bias", "Conv2d": "convolution input", "Linear": "projection input"}
ROLES |= {"LayerNorm": "normalisation input", "GroupNorm": "normalisation input", "Dropout": "dropout input"}
CLAIM = (
    "After the encoder the patch tokens are read-only conditioning: in the DETR decoder they are only "
    "Key/Value of the query->image cross-attention, nothing writes back, and the segmentation head "
    "never touches them."
)


def _prepare(stages: Sam3Stages, size: int, prompt: str, seed: int) -> tuple[VisionFeatures, FusedTokens]:
    gen = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, size, size), generator=gen, dtype=torch.uint8)
    text = tokenize(builtin_tokenizer(), [prompt])
    with torch.no_grad():
        vision = stages.encode_images(preprocess(image.to(stages.device), size, stages.dtype)[None])
        feats = stages.encode_text(text.input_ids.to(stages.device), text.attention_mask.to(stages.device))
        return vision, stages.fuse(vision, feats)


def _unchanged(tokens: Tensor, before: Tensor, version: int) -> dict[str, bool]:
    same = torch.equal(tokens.detach(), before)
    return {"bit_identical": same, "version_unchanged": tokens._version == version}


def _consumers_forward(
    model: Sam3Model, vision: VisionFeatures, fused: FusedTokens, tokens: Tensor, other: Tensor | None
) -> dict[str, dict[str, bool]]:
    """The part of ``Sam3Model.forward`` after the fusion encoder, ``tokens`` as its output."""
    before, version, text, mask = tokens.detach().clone(), tokens._version, fused.text, fused.text_mask
    decoder_in = {"vision_features": tokens if other is None else other, "vision_pos_encoding": fused.pos}
    out = model.detr_decoder(
        **decoder_in, text_features=text, text_mask=mask, spatial_shapes=fused.spatial_shapes
    )
    checks = {"after_decoder": _unchanged(tokens, before, version)}
    queries = out.intermediate_hidden_states
    model.detr_decoder.box_head(queries)
    model.dot_product_scoring(decoder_hidden_states=queries, text_features=text, text_mask=mask)
    mask_in = {"decoder_queries": queries[-1], "backbone_features": list(vision.levels)}
    model.mask_decoder(**mask_in, encoder_hidden_states=tokens, prompt_features=text, prompt_mask=mask)
    return checks | {"after_mask_decoder": _unchanged(tokens, before, version)}


def _classify(entry: dict, grid: tuple[int, int], probes: list[list[int]]) -> dict:
    changes = entry["changes"]
    floor = 4 * changes["repeat"][0]
    derived, layout = changes["all"][0] > floor, token_layout(tuple(entry["shape"]), grid)
    hits = [changes[f"probe{k}"] for k in range(len(probes))]
    kept = derived and layout is not None
    kept = kept and all(
        m > floor and c and max(abs(c[0] - p[0]), abs(c[1] - p[1])) <= 1
        for (m, c), p in zip(hits, probes, strict=True)
    )
    axis = None if not derived else "kept" if kept else "pooled" if layout is None else "indirect"
    return {"derived": derived, "token_axis": axis, "layout": layout, "max_change": changes["all"][0]}


def _consumers(calls: list[dict], grid: tuple[int, int], probes: list[list[int]]) -> list[dict]:
    """Every module call with a token-derived input, inputs classified, first consumers marked."""
    attn_paths = [c["path"] for c in calls if c["type"] == "Sam3Attention"]
    consumers = []
    for c in calls:
        ins = {
            k: _classify(e, grid, probes) | {"source": e["source"], "via": e["via"]}
            for k, e in c["in"].items()
        }
        ins = {
            k: v | {"role": ROLES.get(k if c["type"] == "Sam3Attention" else c["type"], f"input `{k}`")}
            for k, v in ins.items()
            if v["derived"]
        }
        if not ins:
            continue
        outs = [_classify(e, grid, probes)["token_axis"] for e in c["out"].values()]
        nested = any(c["path"].startswith(p + ".") for p in attn_paths)
        direct = any(v["token_axis"] == "kept" and v["source"] in ("tokens", "direct") for v in ins.values())
        consumers.append(
            {
                "path": c["path"],
                "call": c["call"],
                "type": c["type"],
                "inputs": ins,
                "output_token_axis_kept": "kept" in outs,
                "first": direct and not nested and c["type"] in FUNCTIONAL,
            }
        )
    return consumers


def _verdicts(consumers: list[dict], checks: dict, residual: dict, n_layers: int) -> dict:
    kept = {
        c["path"]: sorted(k for k, v in c["inputs"].items() if v["token_axis"] == "kept") for c in consumers
    }
    vca = [f"detr_decoder.layers.{i}.vision_cross_attn" for i in range(n_layers)]
    roles = {p: kept.get(p, []) for p in vca}
    dec = [
        c
        for c in consumers
        if c["path"].startswith("detr_decoder") and not any(c["path"].startswith(p) for p in vca)
    ]
    other_attn = {c["path"]: kept[c["path"]] for c in dec if c["type"] == "Sam3Attention" and kept[c["path"]]}
    dec_out = sorted({c["path"] for c in dec if c["output_token_axis_kept"]})
    read_only = all(v for check in checks.values() for v in check.values())
    pix = next((c["inputs"] for c in consumers if c["path"] == "mask_decoder.pixel_decoder"), {})
    coarse = {
        k: v["source"] for k, v in pix.items() if v["token_axis"] == "kept" and v["layout"] == "grid x1"
    }
    conv0 = kept.get("mask_decoder.pixel_decoder.conv_layers.0", [])
    pca = kept.get("mask_decoder.prompt_cross_attn", [])
    touched = sorted({c["path"] for c in consumers if c["path"].startswith("mask_decoder")})
    holds = (
        all(r == ["key", "value"] for r in roles.values()) and not other_attn and not dec_out and read_only
    )
    axes = {c["path"]: {k: v["token_axis"] for k, v in c["inputs"].items()} for c in consumers}
    evidence = [
        *(f"`{p}`: token-derived inputs (token axis): {axes.get(p) or 'none'}" for p in vca),
        f"other decoder attention with token-axis inputs: {other_attn or 'none'}",
        f"decoder modules outside vision_cross_attn whose output keeps the token axis: {dec_out or 'none'}",
        *(
            f"tokens {k.replace('_', ' ')}: bit-identical {v['bit_identical']}, "
            f"version counter unchanged {v['version_unchanged']}"
            for k, v in checks.items()
        ),
        f"`mask_decoder.prompt_cross_attn`: token-derived inputs (token axis): "
        f"{axes.get('mask_decoder.prompt_cross_attn') or 'none'}",
        f"residual: {residual['check']}: bit-exact {residual['bit_exact']}, "
        f"new tensor {residual['new_tensor']}",
        f"`mask_decoder.pixel_decoder` coarsest level that keeps the token axis (autograd source): "
        f"{coarse or 'none'}; "
        f"`conv_layers.0` convolution input keeps the token axis: {bool(conv0)}",
        f"{len(touched)} mask-decoder modules receive token-derived inputs",
    ]
    return {
        "decoder": {
            "vision_cross_attn_roles": roles,
            "other_attention_token_roles": other_attn,
            "token_axis_outputs": dec_out,
            "writes_back": not read_only,
        },
        "mask_decoder": {
            "prompt_cross_attn_roles": pca,
            "pixel_decoder_coarsest": coarse,
            "pixel_decoder_conv0_roles": conv0,
            "residual": residual,
            "modules_touched": touched,
        },
        "claim": {
            "text": CLAIM,
            "evidence": evidence,
            "decoder_part": "not shown" if not any(roles.values()) else "holds" if holds else "does not hold",
            "segmentation_head_part": "does not hold" if touched else "holds",
        },
    }


def _perturbations(base: Tensor, grid: tuple[int, int], seed: int) -> tuple[dict[str, Tensor], list]:
    """The traced runs of ``base`` ``[B, N, C]``, and the probed grid cells.

    Reference (an autograd leaf), an unperturbed repeat, all tokens plus a random delta,
    and one token at a time at :data:`PROBE_CELLS`.
    """
    delta = torch.randn(base.shape, generator=torch.Generator().manual_seed(seed + 1)).to(base)
    delta = delta * 0.05 * float(base.float().std())
    probes = [[int(fh * grid[0]), int(fw * grid[1])] for fh, fw in PROBE_CELLS]
    traced = base.clone().requires_grad_(True)  # an autograd leaf: the graph tells what comes from it
    runs = {"reference": traced, "repeat": base, "all": base + delta}
    for k, (r, c) in enumerate(probes):
        runs[f"probe{k}"] = base.clone()
        runs[f"probe{k}"][:, r * grid[1] + c] += delta[:, r * grid[1] + c]
    return runs, probes


def _geometry_readers(stages: Sam3Stages, vision: VisionFeatures, seed: int) -> dict:
    """Trace the backbone's coarsest level through the geometry encoder (Meta's prompt token).

    The same method as for the fused tokens, applied to the level the fusion encoder and
    the geometry encoder both read, with hooks on ``geometry_encoder``.
    """
    level = vision.levels[-1]
    grid = (int(level.shape[-2]), int(level.shape[-1]))
    runs, probes = _perturbations(level.flatten(2).transpose(1, 2).detach(), grid, seed)
    roots = {"geometry_encoder": stages.model.geometry_encoder}
    with Tracer(roots, grid) as tracer, torch.enable_grad():
        for run, value in runs.items():
            tokens = value if run == "reference" else value.clone().requires_grad_(True)
            tracer.start(run, tokens)
            stages.prompt_token(tokens.transpose(1, 2).reshape(level.shape), vision.pos[-1])
    consumers = _consumers(list(tracer.calls.values()), grid, probes)
    readers = {
        c["path"]: sorted(k for k, v in c["inputs"].items() if v["token_axis"] == "kept")
        for c in consumers
        if c["first"]
    }
    return {
        "reads": "the backbone's coarsest FPN level (the fusion encoder's image input)",
        "readers": readers,
        "output": "one token appended to every prompt (fusion encoder, decoder, scoring, mask decoder)",
        "consumers": consumers,
    }


def run_audit(
    model: Sam3Model,
    image_size: int | None = None,
    prompt: str = "building",
    seed: int = 0,
    decoder_tokens: Tensor | None = None,
    prompt_form: str = "meta",
) -> dict:
    """Trace the fused patch tokens through every module of SAM 3 that consumes them.

    Args:
        model: a ``transformers.Sam3Model`` in eval mode (its device and dtype are used).
        image_size: square input size; the model's own (1008 for SAM 3) if None.
        prompt: text prompt of the synthetic (random-pixel) image.
        seed: seed of the image and of the perturbations.
        decoder_tokens: ``[B, N, C]`` tokens handed to the DETR decoder instead of the traced
            ones - a control: with unrelated tokens no decoder key/value role may be found.
        prompt_form: SAM 3's prompt form (see :class:`~ovearth.model.stages.Sam3Stages`), as
            segmentation uses it; in ``"meta"`` form the geometry encoder, one more reader of
            the image features, is traced too.

    Returns:
        JSON-ready dict: ``model``, ``input``, ``noise_floor``, ``read_only``, ``decoder``,
        ``mask_decoder``, ``claim`` (verdicts, evidence), ``first_consumers``, ``consumers``,
        ``geometry_encoder`` (None in ``"transformers"`` form).

    """
    stages = Sam3Stages(model, prompt_form=prompt_form)
    size = image_size or stages.image_size
    vision, fused = _prepare(stages, size, prompt, seed)
    grid, base = fused.grid, fused.tokens.detach()
    runs, probes = _perturbations(base, grid, seed)
    traced = runs["reference"]
    roots = {"detr_decoder": model.detr_decoder, "dot_product_scoring": model.dot_product_scoring}
    checks: dict = {}
    with Tracer(roots | {"mask_decoder": model.mask_decoder}, grid) as tracer, torch.enable_grad():
        for run, value in runs.items():
            tokens = traced if run == "reference" else value.clone().requires_grad_(True)
            tracer.start(run, tokens)
            checks[run] = _consumers_forward(model, vision, fused, tokens, decoder_tokens)
    checks = checks["reference"]
    calls = list(tracer.calls.values())
    attn = tracer.calls[("mask_decoder.prompt_cross_attn", 0)]["out"]["out[0]"]["ref"]
    coarse = list(tracer.calls[("mask_decoder.pixel_decoder", 0)]["in"].values())[-1]
    expected = (traced.detach() + attn).transpose(1, 2).reshape(coarse["shape"])
    residual = {
        "check": "pixel_decoder coarsest input == (tokens + prompt_cross_attn output) reshaped to the grid",
        "bit_exact": torch.equal(coarse["ref"], expected),
        "max_abs_diff": float((coarse["ref"] - expected).abs().max()),
        "added_max_abs": float(attn.abs().max()),
        "new_tensor": coarse["source"] != "tokens",
        "source": coarse["source"],
        "via": coarse["via"],
    }
    residual["detected"] = residual["bit_exact"] and residual["added_max_abs"] > 0 and residual["new_tensor"]
    consumers = _consumers(calls, grid, probes)
    cfg, (batch, n_tok, chans) = model.config.detr_decoder_config, base.shape
    return {
        "model": {
            "grid": list(grid),
            "tokens": n_tok,
            "channels": chans,
            "decoder_layers": cfg.num_layers,
            "queries": cfg.num_queries,
            "heads": cfg.num_attention_heads,
            "image_size": size,
            "parameters": sum(p.numel() for p in model.parameters()),
            "dtype": str(base.dtype),
        },
        "input": {
            "prompt": prompt,
            "seed": seed,
            "batch": batch,
            "probe_cells": probes,
            "decoder_tokens_replaced": decoder_tokens is not None,
            "prompt_form": prompt_form,
            "prompt_tokens": int(fused.text.shape[1]),
        },
        "noise_floor": max(
            e["changes"]["repeat"][0] for c in calls for io in ("in", "out") for e in c[io].values()
        ),
        "read_only": checks,
        **_verdicts(consumers, checks, residual, len(model.detr_decoder.layers)),
        "first_consumers": [c["path"] for c in consumers if c["first"]],
        "consumers": consumers,
        "geometry_encoder": _geometry_readers(stages, vision, seed) if prompt_form == "meta" else None,
    }
