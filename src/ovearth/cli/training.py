"""``ovearth train``: an adapter for the fusion encoder, from labels or from the model's own predictions."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from ..constants import DEFAULT_MODEL
from ..errors import InputError
from .app import (
    DeviceOption,
    ModelOption,
    OutputOption,
    PlainProgress,
    PromptFormOption,
    VerboseOption,
    app,
    err,
    load_on,
    progress_bar,
    protocol_from,
    setup_logging,
)
from .settings_options import given


def parse_weights(text: str) -> dict[str, float]:
    """``"seg=1,attn=0.1"`` -> ``{"seg": 1.0, "attn": 0.1}`` (terms not named keep their default).

    Raises:
        InputError: an unknown term or a value that is not a number.

    """
    from ..train.segmentation_loss import TERMS

    out: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, _, value = part.partition("=")
        if name.strip() not in TERMS:
            raise InputError(f"--weights: unknown term '{name.strip()}'; terms: {', '.join(TERMS)}.")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise InputError(f"--weights: '{part}' needs a number, e.g. {name.strip()}=0.1.") from None
    return out


@app.command()
def train(
    output: OutputOption,
    data_root: Annotated[
        Path, typer.Option(help="Root folder of the training data, in the protocol's layout.")
    ],
    dataset: Annotated[str | None, typer.Option(help="Built-in protocol, e.g. loveda.")] = None,
    dataset_config: Annotated[Path | None, typer.Option(help="Your own protocol YAML, same schema.")] = None,
    images: Annotated[
        str | None,
        typer.Option(help="Images folder under the root instead of the protocol's, e.g. img_dir/train."),
    ] = None,
    labels: Annotated[
        str | None, typer.Option(help="Labels folder under the root, e.g. ann_dir/train.")
    ] = None,
    pseudo_labels: Annotated[
        bool,
        typer.Option(
            "--pseudo-labels", help="Self-training: learn from the frozen model's confident labels."
        ),
    ] = False,
    pseudo_threshold: Annotated[
        float, typer.Option(help="Class logit a pixel needs for a pseudo-label.")
    ] = 0.7,
    trainable: Annotated[str, typer.Option(help="fusion, fusion-last-N or lora.")] = "lora",
    lora_rank: Annotated[int, typer.Option(help="LoRA rank.")] = 8,
    lora_alpha: Annotated[float, typer.Option(help="LoRA scale numerator (delta x alpha / rank).")] = 16.0,
    steps: Annotated[int, typer.Option(help="Optimiser steps.")] = 1000,
    batch: Annotated[int, typer.Option(help="Views per step (accumulated one view at a time).")] = 2,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 1e-4,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 0.01,
    warmup: Annotated[int, typer.Option(help="Linear warm-up steps (then cosine decay).")] = 50,
    clip: Annotated[float, typer.Option(help="Gradient-norm clip (0: none).")] = 1.0,
    weights: Annotated[
        str, typer.Option(help="Loss weights, e.g. 'seg=1,attn=0.1,contrast=0.05,boundary=0.02'.")
    ] = "",
    attention_kind: Annotated[str, typer.Option(help="Attention distillation: kl, l1, topk or rank.")] = "kl",
    checkpointing: Annotated[
        bool,
        typer.Option(
            "--checkpointing",
            help="Recompute fusion layers and mask decoder in backward (-31 % memory, +13 % time).",
        ),
    ] = False,
    amp: Annotated[bool, typer.Option("--amp/--no-amp", help="bfloat16 autocast on CUDA.")] = True,
    save_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = 100,
    seed: Annotated[int, typer.Option(help="Seed of view order, LoRA init and sampling.")] = 0,
    limit: Annotated[int | None, typer.Option(help="Only the first N images.")] = None,
    restart: Annotated[
        bool, typer.Option("--restart", help="Discard an earlier run in -o instead of resuming it.")
    ] = False,
    prompt_form: PromptFormOption = None,
    model: ModelOption = DEFAULT_MODEL,
    device: DeviceOption = "auto",
    verbose: VerboseOption = False,
) -> None:
    """Train an adapter of the fusion encoder (everything else frozen); a stopped run resumes."""
    setup_logging(verbose)
    from ..data.datasets import SegmentationDataset
    from ..train.settings import TrainSettings

    protocol = protocol_from(dataset, dataset_config)
    if (images is not None or labels is not None) and protocol.layout is not None:
        layout = dataclasses.replace(
            protocol.layout,
            images=images or protocol.layout.images,
            labels=labels or protocol.layout.labels,
            split=None if images is not None else protocol.layout.split,
        )
        protocol = dataclasses.replace(protocol, layout=layout)
    settings = TrainSettings(
        trainable=trainable,
        lora_rank=lora_rank,
        lora_alpha=lora_alpha,
        steps=steps,
        batch=batch,
        lr=lr,
        weight_decay=weight_decay,
        warmup=warmup,
        clip=clip,
        seed=seed,
        attention_kind=attention_kind,
        pseudo_labels=pseudo_labels,
        pseudo_threshold=pseudo_threshold,
        checkpointing=checkpointing,
        amp=amp,
        save_every=save_every,
        **parse_weights(weights),
    )
    data = SegmentationDataset(protocol, data_root, limit=limit, require_labels=not pseudo_labels)

    from ..train.loop import train as run_training

    loaded = load_on(model, device)
    with progress_bar("{task.fields[loss]}") as bar:
        task = bar.add_task("train", total=settings.steps, loss="")
        plain = PlainProgress("train")

        def progress(stage: str, done: int, total: int, row: dict | None) -> None:
            loss = "" if row is None else f"loss {row['total']:.4f}"
            bar.update(task, description=stage, completed=done, total=total, loss=loss)
            plain(done, total, f" {stage} steps" + (f", {loss}" if loss else ""))

        segment = protocol.settings.replace(**given(prompt_form=prompt_form))
        summary = run_training(
            loaded, data, output, settings, segment=segment, restart=restart, progress=progress
        )
    last = summary["last_10_steps_mean"].get("total")
    shown = f"; mean loss of the last steps {last:.4f}" if last is not None else ""
    err.print(
        f"trained {summary['trainable_parameters']:,} parameters ({settings.trainable}) for "
        f"{summary['steps_done']} steps{shown} -> {output}/adapter (use --adapter {output})",
        soft_wrap=True,
    )
