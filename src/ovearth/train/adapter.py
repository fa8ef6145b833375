"""What training may change in SAM 3, and the adapter folder that carries the change.

Trainable parts (``--trainable``), everything else frozen:

* ``fusion``: every parameter of the DETR fusion encoder (6 layers, 9.5 M parameters in
  SAM 3);
* ``fusion-last-N``: the parameters of its last ``N`` layers only;
* ``lora``: a low-rank delta on every ``nn.Linear`` of the fusion encoder,
  ``y = W x + b + (alpha / r) B A x`` with ``A [r, in]`` (Kaiming-uniform) and
  ``B [out, r] = 0`` at the start, so an untrained adapter changes nothing
  (0.42 M parameters in SAM 3 at ``r = 8``).

An adapter is a folder with ``adapter.safetensors`` (the trained tensors only, keyed
by their ``Sam3Model`` parameter name; LoRA factors as ``<linear>.lora_A`` and
``<linear>.lora_B``) and ``adapter.json`` (the trainable spec, rank, alpha, the base
model's fingerprint and how it was trained). :func:`apply_adapter` loads it into a
model: full tensors are copied in, LoRA deltas merged into the weights
(``W <- W + (alpha / r) B A``), so inference costs exactly what it did before.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..data.atomic import atomic_path, write_text_atomic
from ..errors import CheckpointError, InputError
from ..model.fingerprint import sha256_file
from ..model.load import LoadedModel

logger = logging.getLogger(__name__)

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_META = "adapter.json"
_FUSION = "detr_encoder"


@dataclass(frozen=True)
class Trainable:
    """A parsed ``--trainable`` spec.

    Attributes:
        kind: ``"fusion"``, ``"fusion-last"`` or ``"lora"``.
        last: ``N`` of ``fusion-last-N``.
        rank: LoRA rank ``r``.
        alpha: LoRA scale numerator (the delta is scaled by ``alpha / r``).

    """

    kind: str
    last: int = 0
    rank: int = 8
    alpha: float = 16.0

    @classmethod
    def parse(cls, spec: str, rank: int = 8, alpha: float = 16.0) -> Trainable:
        """``fusion``, ``fusion-last-N`` or ``lora`` (with ``rank`` and ``alpha``).

        Raises:
            InputError: an unknown spec or a bad rank.

        """
        text = spec.strip().lower()
        match = re.fullmatch(r"fusion-last-(\d+)", text)
        if match and int(match.group(1)) >= 1:
            return cls("fusion-last", last=int(match.group(1)))
        if text == "fusion":
            return cls("fusion")
        if text == "lora":
            if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
                raise InputError(f"--lora-rank must be an integer >= 1, got {rank}.")
            if not alpha > 0:
                raise InputError(f"--lora-alpha must be > 0, got {alpha}.")
            return cls("lora", rank=rank, alpha=float(alpha))
        raise InputError(f"--trainable '{spec}' is not one of fusion, fusion-last-N (N >= 1) or lora.")

    @property
    def spec(self) -> str:
        """The spec as typed (``fusion-last-2``, ``lora``)."""
        return f"fusion-last-{self.last}" if self.kind == "fusion-last" else self.kind

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (rank and alpha only for LoRA)."""
        out: dict[str, Any] = {"trainable": self.spec}
        if self.kind == "lora":
            out.update(rank=self.rank, alpha=self.alpha)
        return out


class LoRALinear(nn.Module):
    """``base(x) + (alpha / r) * x A^T B^T``: a frozen ``nn.Linear`` plus a trainable low-rank delta.

    Args:
        base: the linear layer (kept, frozen).
        rank: ``r``.
        alpha: scale numerator.
        generator: RNG for ``A``'s Kaiming-uniform initialisation (``B`` starts at 0).

    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator | None = None):
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        weight = base.weight
        bound = 1.0 / math.sqrt(base.in_features)  # kaiming_uniform_(a=sqrt(5)), as nn.Linear
        a = (torch.rand(rank, base.in_features, generator=generator) * 2 - 1) * bound
        self.lora_A = nn.Parameter(a.to(weight.device, weight.dtype))
        zeros = torch.zeros(base.out_features, rank, device=weight.device, dtype=weight.dtype)
        self.lora_B = nn.Parameter(zeros)

    def forward(self, x: Tensor) -> Tensor:
        """``[..., in] -> [..., out]``."""
        return self.base(x) + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scale

    def delta(self) -> Tensor:
        """``(alpha / r) B A``, ``[out, in]``: what merging adds to ``base.weight``."""
        return (self.lora_B @ self.lora_A) * self.scale


def fusion_layers(model: nn.Module) -> nn.ModuleList:
    """The fusion encoder's layers."""
    return model.get_submodule(_FUSION).layers


def prepare_trainable(model: nn.Module, trainable: Trainable, seed: int = 0) -> dict[str, nn.Parameter]:
    """Freeze the model, then make the ``trainable`` part trainable (inserting LoRA modules).

    Args:
        model: a ``Sam3Model`` (changed in place).
        trainable: what to train.
        seed: seed of the LoRA ``A`` initialisation.

    Returns:
        The trainable parameters by their names in ``model`` (the adapter file's keys).

    Raises:
        InputError: ``fusion-last-N`` with ``N`` above the number of layers.

    """
    model.requires_grad_(False)
    layers = fusion_layers(model)
    if trainable.kind == "fusion":
        model.get_submodule(_FUSION).requires_grad_(True)
    elif trainable.kind == "fusion-last":
        if trainable.last > len(layers):
            raise InputError(
                f"--trainable {trainable.spec}: the fusion encoder has only {len(layers)} layer(s)."
            )
        for layer in layers[len(layers) - trainable.last :]:
            layer.requires_grad_(True)
    else:
        generator = torch.Generator().manual_seed(seed)
        for module in list(model.get_submodule(_FUSION).modules()):
            for child_name, child in list(module.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(module, child_name, LoRALinear(child, trainable.rank, trainable.alpha, generator))
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def release_trainable(model: nn.Module, originals: dict[str, Tensor]) -> None:
    """Undo :func:`prepare_trainable` and freeze the model.

    LoRA modules give way to their base layers and the parameters named in ``originals``
    get those values back.
    """
    for module in list(model.get_submodule(_FUSION).modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                setattr(module, child_name, child.base)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in originals.items():
            if name in params:
                params[name].copy_(value)
    model.requires_grad_(False)


def trainable_tensors(model: nn.Module) -> dict[str, Tensor]:
    """Current values of the trainable parameters, detached, on the CPU, contiguous."""
    return {
        name: p.detach().to("cpu", copy=True).contiguous()
        for name, p in model.named_parameters()
        if p.requires_grad
    }


def save_adapter(folder: str | Path, tensors: dict[str, Tensor], meta: dict[str, Any]) -> Path:
    """Write ``adapter.safetensors`` and ``adapter.json`` into ``folder`` (each atomically)."""
    folder = Path(folder)
    with atomic_path(folder / ADAPTER_WEIGHTS) as temp:
        save_file(tensors, str(temp), metadata={"format": "pt", "ovearth": "adapter"})
    write_text_atomic(folder / ADAPTER_META, json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return folder


def read_adapter(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any], Path]:
    """Read an adapter folder, its ``adapter.safetensors``, or a training run's output folder.

    Returns:
        ``(tensors, meta, weights file)``.

    Raises:
        CheckpointError: missing or unreadable files, or an unknown trainable spec.

    """
    path = Path(path).expanduser()
    if path.is_dir() and not (path / ADAPTER_WEIGHTS).exists() and (path / "adapter").is_dir():
        path = path / "adapter"  # the output folder of `ovearth train`
    weights = path / ADAPTER_WEIGHTS if path.is_dir() else path
    meta_file = weights.parent / ADAPTER_META
    if not weights.is_file():
        raise CheckpointError(f"{path}: no adapter here (expected a folder with {ADAPTER_WEIGHTS}).")
    if not meta_file.is_file():
        raise CheckpointError(f"{meta_file}: missing; an adapter needs it beside {ADAPTER_WEIGHTS}.")
    try:
        meta = json.loads(meta_file.read_text())
        tensors = load_file(str(weights))
    except (json.JSONDecodeError, SafetensorError, OSError) as error:
        raise CheckpointError(f"{weights}: not a readable ovearth adapter ({error}).") from None
    if not isinstance(meta, dict) or "trainable" not in meta:
        raise CheckpointError(f"{meta_file}: no 'trainable' entry; not an ovearth adapter.")
    try:
        Trainable.parse(str(meta["trainable"]), int(meta.get("rank", 8)), float(meta.get("alpha", 16.0)))
    except InputError as error:
        raise CheckpointError(f"{meta_file}: {error}") from None
    return tensors, meta, weights


def _updates(model: nn.Module, tensors: dict[str, Tensor], alpha: float, weights: Path) -> dict[str, Tensor]:
    """New values of the parameters an adapter changes, checked against ``model``."""
    params = dict(model.named_parameters())
    updates: dict[str, Tensor] = {}
    for name, value in tensors.items():
        if name.endswith((".lora_A", ".lora_B")):
            continue
        if name not in params:
            raise CheckpointError(f"{weights}: '{name}' is not a parameter of this SAM 3 model.")
        if tuple(value.shape) != tuple(params[name].shape):
            raise CheckpointError(
                f"{weights}: '{name}' is {tuple(value.shape)}, the model's is {tuple(params[name].shape)}."
            )
        updates[name] = value
    for name in sorted(n[: -len(".lora_A")] for n in tensors if n.endswith(".lora_A")):
        a, b = tensors[f"{name}.lora_A"], tensors.get(f"{name}.lora_B")
        weight = params.get(f"{name}.weight")
        fits = b is not None and weight is not None and b.shape[1] == a.shape[0]
        if not fits or (b.shape[0], a.shape[1]) != tuple(weight.shape):
            raise CheckpointError(f"{weights}: LoRA factors of '{name}' do not fit this model's layer.")
        delta = (b @ a) * (alpha / a.shape[0])
        updates[f"{name}.weight"] = weight.detach() + delta.to(weight.device, weight.dtype)
    return updates


def apply_adapter(loaded: LoadedModel, path: str | Path) -> LoadedModel:
    """Load a trained adapter into ``loaded.model`` (in place).

    Full tensors replace the model's; LoRA deltas are merged into the linear weights.

    Returns:
        The same model with ``source`` ``"<model>+adapter:<path>"`` and a fingerprint
        that hashes the base fingerprint with the adapter file (so caches never mix
        adapted and plain results).

    Raises:
        CheckpointError: an unreadable adapter, or tensors that do not fit this model.

    """
    return _apply(loaded, path)[0]


def _apply(loaded: LoadedModel, path: str | Path) -> tuple[LoadedModel, dict[str, Tensor]]:
    """:func:`apply_adapter`, also returning the values it replaced (to put them back)."""
    tensors, meta, weights = read_adapter(path)
    updates = _updates(loaded.model, tensors, float(meta.get("alpha", 16.0)), weights)
    params = dict(loaded.model.named_parameters())
    replaced = {name: params[name].detach().clone() for name in updates}
    with torch.no_grad():
        for name, value in updates.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))
    base = meta.get("base_fingerprint")
    if base not in (None, loaded.fingerprint):
        logger.warning("adapter %s was trained on weights %s, not %s", weights, base, loaded.fingerprint)
    fingerprint = hashlib.sha256(f"{loaded.fingerprint}:{sha256_file(weights)}".encode()).hexdigest()[:16]
    source = f"{loaded.source}+adapter:{weights.parent}"
    return replace(loaded, source=source, fingerprint=fingerprint), replaced


@contextlib.contextmanager
def adapted(loaded: LoadedModel, path: str | Path | None) -> Iterator[LoadedModel]:
    """``apply_adapter`` for the duration of a ``with`` block, then the original weights back.

    ``path`` None yields ``loaded`` unchanged.
    """
    if path is None or str(path) == "":
        yield loaded
        return
    model, replaced = _apply(loaded, path)
    params = dict(loaded.model.named_parameters())
    try:
        yield model
    finally:
        with torch.no_grad():
            for name, value in replaced.items():
                params[name].copy_(value)
