"""Candidate prompt names per class: the protocol's own, the user's, and a shipped synonym pool.

The built-in pool is data, ``ovearth/configs/vocabulary/remote_sensing.yaml``: groups of
names for one kind of thing. A class takes the names of every group that holds one of its
protocol names (case-insensitive). A class's pool is, in order and without repeats: its
protocol names, the user's names for it (``--candidates FILE``), then the built-in
groups' names. A built-in name that would land in two classes, or that is another class's
own name, is left out (it would make the classes fight over it); a user's name there is
an error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from ..data.protocols import read_yaml
from ..errors import InputError
from ..segment.vocabulary import Vocabulary

BUILTIN_POOL = "remote_sensing"


@dataclass(frozen=True)
class CandidatePool:
    """The names calibrate may choose from, per class.

    Attributes:
        classes: ``K`` tuples of names (the protocol's names first).
        protocol: ``K`` tuples, the protocol's own names (the baseline).

    """

    classes: tuple[tuple[str, ...], ...]
    protocol: tuple[tuple[str, ...], ...]

    @property
    def candidates(self) -> Vocabulary:
        """Every candidate as a synonym of its class (``names`` and ``name_class``: ``P`` names)."""
        return Vocabulary(self.classes)

    @property
    def names(self) -> list[str]:
        """Every candidate name, class by class (``P`` names)."""
        return self.candidates.names

    @property
    def name_class(self) -> list[int]:
        """The class of each candidate name (length ``P``)."""
        return self.candidates.name_class

    def indices(self, chosen: Sequence[Sequence[str]]) -> tuple[tuple[int, ...], ...]:
        """Per class, the positions in :attr:`names` of ``chosen`` names."""
        where = {name: i for i, name in enumerate(self.names)}
        return tuple(tuple(where[name] for name in names) for names in chosen)


def builtin_groups(name: str = BUILTIN_POOL) -> list[list[str]]:
    """The synonym groups of a shipped pool (``configs/vocabulary/<name>.yaml``)."""
    path = Path(str(resources.files("ovearth").joinpath("configs", "vocabulary", f"{name}.yaml")))
    data = yaml.safe_load(path.read_text())
    return [[str(key), *map(str, names)] for key, names in data["groups"].items()]


def read_candidates(path: str | Path) -> dict[str, list[str]]:
    """A user's candidates file: ``class: [name, ...]`` (or ``class: "a, b"``) per line.

    Raises:
        InputError: missing or unreadable file, not a mapping, or an entry that is not
            text or a list of text.

    """
    path = Path(path)
    data = read_yaml(path, "candidates")
    if not isinstance(data, dict) or not data:
        raise InputError(
            f"{path}: a candidates file maps class names to names, e.g. 'building: [house, roof]'."
        )
    out: dict[str, list[str]] = {}
    for key, value in data.items():
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(v, str) and v.strip() for v in items):
            raise InputError(f"{path}: the names of '{key}' must be text or a list of text, got {value!r}.")
        bad = next((v for v in items if ";" in v or "," in v), None)
        if bad is not None:
            raise InputError(
                f"{path}: the name '{bad}' of '{key}' holds ',' or ';', which separate names and classes."
            )
        out[str(key)] = [" ".join(v.split()) for v in items]
    return out


def build_pool(
    vocabulary: Vocabulary,
    user: Mapping[str, Sequence[str]] | None = None,
    builtin: bool = True,
    max_names: int | None = None,
    source: str = "--candidates",
) -> CandidatePool:
    """The candidate pool of each class of ``vocabulary`` (see the module docstring).

    Args:
        vocabulary: the protocol's classes.
        user: the user's names per class (keyed by any of the class's protocol names).
        builtin: add the shipped synonym groups.
        max_names: at most this many names per class (the protocol's names always stay).
        source: how to name the user's file in errors.

    Raises:
        InputError: a user's key that names no class, or a user's name that belongs to
            another class.

    """
    own = {name.lower(): k for k, names in enumerate(vocabulary.classes) for name in names}
    extra: list[list[str]] = [[] for _ in vocabulary.classes]
    for key, names in (user or {}).items():
        k = own.get(key.lower())
        if k is None:
            raise InputError(
                f"{source}: '{key}' is not a class; the classes are {', '.join(vocabulary.labels)}."
            )
        for name in names:
            if own.get(name.lower(), k) != k:
                other = vocabulary.labels[own[name.lower()]]
                raise InputError(f"{source}: '{name}' is given for '{key}' but is the class '{other}'.")
            extra[k].append(name)
    found: list[list[str]] = [[] for _ in vocabulary.classes]
    if builtin:
        for group in builtin_groups():
            lower = {n.lower() for n in group}
            for k, names in enumerate(vocabulary.classes):
                if lower & {n.lower() for n in names}:
                    found[k].extend(group)
    claimed: dict[str, set[int]] = {}
    for k, names in enumerate(found):
        for name in names:
            claimed.setdefault(name.lower(), set()).add(k)
    for k, names in enumerate(extra):
        for name in names:
            claimed.setdefault(name.lower(), set()).add(k)
    classes = []
    for k, names in enumerate(vocabulary.classes):
        pool, seen = list(names), {n.lower() for n in names}
        for name in [*extra[k], *found[k]]:
            key = name.lower()
            ambiguous = own.get(key, k) != k or claimed.get(key, {k}) != {k}
            if key in seen or (ambiguous and name not in extra[k]):
                continue
            seen.add(key)
            pool.append(name)
        if max_names is not None:
            pool = pool[: max(max_names, len(names))]
        classes.append(tuple(pool))
    # a user's name claimed by two classes' user lists
    for key, ks in claimed.items():
        users = [k for k in ks if key in {n.lower() for n in extra[k]}]
        if len(users) > 1:
            raise InputError(f"{source}: '{key}' is given for two classes; a name may serve one class.")
    return CandidatePool(tuple(classes), vocabulary.classes)
