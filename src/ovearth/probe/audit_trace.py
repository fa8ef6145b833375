"""The audit's hooks: every module call's tensor inputs and outputs, and where they come from.

:class:`Tracer` records, for each call under the hooked roots, whether an input is the patch
tokens themselves, a direct function of them (through transparent modules only) or reaches
them via other modules, with each input's layout against the token grid
(:mod:`ovearth.probe.audit` runs it).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor, nn

#: modules a token passes through without counting as a consumer (the graph looks through them)
TRANSPARENT = (nn.LayerNorm, nn.GroupNorm, nn.Dropout)


def _flatten(items: list[tuple[str, Any]]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for name, value in items:
        if isinstance(value, Tensor):
            out[name] = value
        elif isinstance(value, dict):
            out.update({f"{name}.{k}": v for k, v in value.items() if isinstance(v, Tensor)})
        elif isinstance(value, (list, tuple)):
            out.update({f"{name}[{i}]": v for i, v in enumerate(value) if isinstance(v, Tensor)})
    return out


def _named_inputs(module: nn.Module, args: tuple, kwargs: dict) -> dict[str, Tensor]:
    try:
        names = [p for p in inspect.signature(module.forward).parameters if p not in ("args", "kwargs")]
    except (TypeError, ValueError):
        names = []
    named = [(names[i] if i < len(names) else f"arg{i}", a) for i, a in enumerate(args)]
    return _flatten(named + list(kwargs.items()))


def token_layout(shape: tuple[int, ...], grid: tuple[int, int]) -> str | None:
    """``"grid xS"`` for ``[..., S*h, S*w]``, ``"tokens dim D"`` for an axis of size h*w, else None."""
    h, w = grid
    if len(shape) >= 2 and shape[-2] % h == 0 and shape[-1] % w == 0 and shape[-2] // h == shape[-1] // w > 0:
        return f"grid x{shape[-2] // h}"
    dims = [d for d, n in enumerate(shape) if n == h * w]
    return f"tokens dim {dims[-1]}" if dims else None


def _cell(diff: Tensor, grid: tuple[int, int]) -> list[int] | None:
    """Grid cell ``[row, col]`` of the largest change ``diff = |delta|`` along the token axis."""
    layout, (h, w) = token_layout(tuple(diff.shape), grid), grid
    if layout is None or float(diff.max()) == 0.0:
        return None
    if layout.startswith("grid"):
        scale, width = diff.shape[-2] // h, diff.shape[-1]
        idx = int(diff.reshape(-1, diff.shape[-2], width).amax(0).argmax())
        return [idx // width // scale, idx % width // scale]
    idx = int(diff.movedim(int(layout.split()[-1]), -1).reshape(-1, h * w).amax(0).argmax())
    return [idx // w, idx % w]


class Tracer:
    """Forward hooks on every sub-module of ``roots``; one record per module call."""

    def __init__(self, roots: dict[str, nn.Module], grid: tuple[int, int]) -> None:
        self.paths: dict[nn.Module, str] = {}
        for prefix, root in roots.items():
            for name, mod in root.named_modules():
                self.paths.setdefault(mod, f"{prefix}.{name}" if name else prefix)
        self.grid, self.run, self.tokens = grid, "reference", torch.empty(0)
        self.calls: dict[tuple[str, int], dict] = {}
        self.stops: dict[Any, str] = {}  # grad_fn of a module output -> module path
        self.count: dict[str, int] = {}
        self.handles: list = []

    def __enter__(self) -> Tracer:
        for mod in self.paths:
            self.handles.append(mod.register_forward_pre_hook(self._pre, with_kwargs=True))
            self.handles.append(mod.register_forward_hook(self._post))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()

    def start(self, run: str, tokens: Tensor) -> None:
        """Begin recording run ``run`` whose patch tokens are ``tokens``."""
        self.run, self.tokens, self.count = run, tokens, {}

    def _source(self, t: Tensor) -> dict:
        if t.untyped_storage().data_ptr() == self.tokens.untyped_storage().data_ptr():
            return {"source": "tokens", "via": []}
        direct, via, seen, stack = False, set(), set(), [t.grad_fn]
        while stack:
            node = stack.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            if getattr(node, "variable", None) is self.tokens:
                direct = True
            elif node in self.stops:
                via.add(self.stops[node])
            else:
                stack.extend(n for n, _ in node.next_functions)
        return {"source": "direct" if direct else "via" if via else "none", "via": sorted(via)}

    def _record(self, key: tuple[str, int], io: str, tensors: dict[str, Tensor], module: nn.Module) -> None:
        if self.run != "reference":
            for name, t in tensors.items():
                entry = self.calls[key][io][name]
                diff = (t.detach().float() - entry["ref"].float()).abs()
                entry["changes"][self.run] = [float(diff.max()), _cell(diff, self.grid)]
            return
        if io == "in":
            self.calls[key] = {"path": key[0], "call": key[1], "type": type(module).__name__, "in": {}}
            self.calls[key]["out"] = {}
        for name, t in tensors.items():
            entry = {"shape": list(t.shape), "ref": t.detach().clone(), "changes": {}}
            self.calls[key][io][name] = entry | (self._source(t) if io == "in" else {})
            if io == "out" and t.grad_fn is not None and not isinstance(module, TRANSPARENT):
                self.stops[t.grad_fn] = key[0]  # outer modules overwrite inner ones

    def _pre(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        path = self.paths[module]
        self.count[path] = self.count.get(path, 0) + 1
        self._record((path, self.count[path] - 1), "in", _named_inputs(module, args, kwargs), module)

    def _post(self, module: nn.Module, args: tuple, output: Any) -> None:
        path = self.paths[module]
        self._record((path, self.count[path] - 1), "out", _flatten([("out", output)]), module)
