"""The audit's files: ``audit.json`` and the ``audit.md`` table of consumers and verdicts."""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..data.atomic import write_text_atomic


def _rows(consumers: list[dict], first: bool) -> str:
    rows = [
        "| module | call | input | role | token axis | source | output keeps token axis |",
        "|---" * 7 + "|",
    ]
    for c in consumers:
        for name, v in c["inputs"].items():
            if v["token_axis"] == "kept" and (c["first"] or not first):
                via = ", ".join(f"`{p}`" for p in v["via"])
                src = {"via": f"via {via}", "direct": "direct" + (f" + via {via}" if via else "")}.get(
                    v["source"], v["source"]
                )
                rows.append(
                    f"| `{c['path']}` | {c['call']} | `{name}` | {v['role']} | {v['layout']} | {src} | "
                    f"{'yes' if c['output_token_axis_kept'] else 'no'} |"
                )
    return "\n".join(rows)


def write_audit(result: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write ``audit.json`` and ``audit.md`` (each atomically) into ``out_dir``.

    Returns:
        ``{"json": path, "md": path}``.

    """
    paths = {"json": Path(out_dir) / "audit.json", "md": Path(out_dir) / "audit.md"}
    write_text_atomic(paths["json"], json.dumps(result, indent=2) + "\n")
    m, claim, res = result["model"], result["claim"], result["mask_decoder"]["residual"]
    consumers = result["consumers"]
    pooled = sorted(
        {
            re.sub(r"layers\.\d+", "layers.*", c["path"])
            for c in consumers
            if all(v["token_axis"] != "kept" for v in c["inputs"].values())
        }
    )
    evidence = "\n".join(f"- {e}" for e in claim["evidence"])
    via, listed = ", ".join(res["via"]) or "nothing", ", ".join(f"`{p}`" for p in pooled)
    method = (__doc__ or "").split("\n\n", 1)[-1].strip()
    geo = result.get("geometry_encoder")
    if geo is None:
        geometry = "Prompt form `transformers`: the geometry encoder does not run for a text prompt."
    else:
        read = "; ".join(f"`{p}` ({', '.join(r)})" for p, r in geo["readers"].items()) or "none found"
        geometry = (
            f"Prompt form `meta` (Meta's sam3, SegEarth-OV3): the geometry encoder reads {geo['reads']}. "
            f"First readers with the token axis kept: {read}. Its output is {geo['output']}, so a "
            "refinement of the backbone level reaches it and a refinement after the fusion encoder does not."
        )
    text = f"""# Patch-token audit

Model: {m["grid"][0]} x {m["grid"][1]} = {m["tokens"]} tokens of {m["channels"]} channels, \
{m["decoder_layers"]} decoder layers, {m["queries"]} queries, input {m["image_size"]}, {m["dtype"]}, \
{m["parameters"]:,} parameters; prompt `{result["input"]["prompt"]}` on a synthetic image \
(seed {result["input"]["seed"]}), prompt form `{result["input"]["prompt_form"]}` \
({result["input"]["prompt_tokens"]} prompt tokens).

**Claim.** {claim["text"]}

- Decoder part: **{claim["decoder_part"]}**
- Segmentation-head part: **{claim["segmentation_head_part"]}**

## Evidence

{evidence}
- residual: max |difference| {res["max_abs_diff"]:.3g}, added term max |.| {res["added_max_abs"]:.3g}, \
autograd source of the coarse grid: {res["source"]} + via {via}
- noise floor (unperturbed repeat, any recorded tensor): {result["noise_floor"]:.3g}

## First consumers

Attention, convolution, normalisation and projection modules (not nested in an attention) that \
receive the tokens, or a direct function of them, with the token axis kept.

{_rows(consumers, True)}

## Every input that keeps the token axis

{_rows(consumers, False)}

## Pooled consumers

Token information reaches these only without a token axis (through the queries, after attention \
pooling) or as a bias that is not token-aligned: {listed}.

## The geometry encoder: one more reader of the image tokens

{geometry}

## Method

{method}
"""
    write_text_atomic(paths["md"], text)
    return paths
