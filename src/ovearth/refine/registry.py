"""One registry of refiners and the ``--refine`` grammar.

``"smooth:a=0.2+lowpass:r=12,b=0.2"`` composes refiners left to right; each is
``name[:key=value,...]``. Values are parsed as int, float, bool (``true``/``false``) or
text, then checked against the refiner's dataclass fields. Unknown names and parameters
are errors that list what exists and suggest the closest match.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from torch import Tensor

from ..errors import InputError
from .base import RefineContext, Refiner, check_params

_REGISTRY: dict[str, type[Refiner]] = {}
R = TypeVar("R", bound=type[Refiner])


def register(name: str) -> Callable[[R], R]:
    """Class decorator adding a refiner to the registry under ``name``.

    Raises:
        ValueError: the name is taken (a programming error, not a user one).

    """

    def add(cls: R) -> R:
        if name in _REGISTRY:
            raise ValueError(f"A refiner named '{name}' is already registered ({_REGISTRY[name].__name__}).")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return add


def list_refiners() -> list[str]:
    """Registered refiner names, sorted."""
    _load_builtins()
    return sorted(_REGISTRY)


def refiner_class(name: str) -> type[Refiner]:
    """The class registered under ``name``.

    Raises:
        InputError: unknown name (with the closest names and the full list).

    """
    _load_builtins()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=2)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        raise InputError(f"Unknown refiner '{name}'.{hint} Known: {', '.join(sorted(_REGISTRY))}.")
    return _REGISTRY[name]


def create_refiner(name: str, **params: Any) -> Refiner:
    """Build a refiner by name with keyword parameters.

    Raises:
        InputError: unknown refiner or parameter, or a value the refiner rejects.

    """
    cls = refiner_class(name)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - fields)
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(fields), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        allowed = ", ".join(sorted(fields)) or "none"
        raise InputError(
            f"Refiner '{name}' has no parameter '{unknown[0]}'{hint}; its parameters: {allowed}."
        )
    try:
        refiner = cls(**params)
        check_params(refiner)
    except (TypeError, ValueError) as error:
        raise InputError(f"Refiner '{name}': {error}") from None
    return refiner


def _value(text: str) -> Any:
    low = text.lower()
    if low in {"true", "false"}:
        return low == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


@dataclass(frozen=True)
class RefinePipeline:
    """Refiners applied left to right; the empty pipeline is the identity."""

    refiners: tuple[Refiner, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.refiners)

    def __call__(self, tokens: Tensor, grid: tuple[int, int], context: RefineContext) -> Tensor:
        """Apply the refiners in order."""
        for refiner in self.refiners:
            tokens = refiner(tokens, grid, context)
        return tokens

    @property
    def first_pass(self) -> set[str]:
        """What the refiners need from a first pass (empty: one pass is enough)."""
        return {r.first_pass for r in self.refiners if r.first_pass}

    def spec(self) -> str:
        """Canonical spec with every parameter written out ('' for none)."""
        return "+".join(r.spec() for r in self.refiners)


def parse_refine(spec: str | None) -> RefinePipeline:
    """Parse ``"name:k=v,k=v+name2"`` into a pipeline ("" or "none" gives the identity).

    Raises:
        InputError: malformed spec, unknown refiner or parameter, bad value.

    """
    text = (spec or "").strip()
    if text.lower() in {"", "none"}:
        return RefinePipeline()
    refiners = []
    for part in text.split("+"):
        name, _, args = part.strip().partition(":")
        params: dict[str, Any] = {}
        for item in filter(None, (a.strip() for a in args.split(","))):
            key, eq, value = item.partition("=")
            if not eq or not key.strip():
                raise InputError(f"--refine '{spec}': '{item}' is not key=value (e.g. smooth:a=0.2,k=3).")
            params[key.strip()] = _value(value.strip())
        if not name.strip():
            raise InputError(f"--refine '{spec}' has an empty refiner name (look for '++' or a leading '+').")
        refiners.append(create_refiner(name.strip(), **params))
    return RefinePipeline(tuple(refiners))


def _load_builtins() -> None:
    """Import the built-in refiner modules (each registers itself)."""
    from . import builtins  # noqa: F401
