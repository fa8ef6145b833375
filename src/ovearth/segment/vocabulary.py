"""Class vocabularies: one class per entry, synonyms merged by max.

A vocabulary is written ``"building,roof,house;road;tree"``: classes separated by
``;`` (or given as a list), synonyms of one class separated by ``,``. Every name is
prompted separately; a class's logit is the max over its names (SegEarth-OV3).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

from ..constants import NODATA_LABEL
from ..errors import InputError


@dataclass(frozen=True)
class Vocabulary:
    """Ordered classes, each with one or more prompt names.

    Attributes:
        classes: ``K`` tuples of names; the first name labels the class.

    """

    classes: tuple[tuple[str, ...], ...]

    @classmethod
    def parse(cls, spec: str | Sequence[str | Sequence[str]]) -> Vocabulary:
        """Build a vocabulary from ``"a,b;c"`` or ``["a,b", "c"]`` or ``[["a", "b"], ["c"]]``.

        Raises:
            InputError: empty vocabulary, empty name, duplicate name, a name with a
                control character (:func:`check_printable`), or more classes than the
                label format holds.

        """
        if isinstance(spec, str):
            if not spec.strip():
                raise InputError("The class list is empty; give classes like 'building,house;road;tree'.")
            entries: list[str | Sequence[str]] = spec.split(";")
        else:
            entries = list(spec)
        if not entries:
            raise InputError("The class list is empty; give classes like 'building,house;road;tree'.")
        classes = []
        for entry in entries:
            raw = entry.split(",") if isinstance(entry, str) else list(entry)
            names = tuple(" ".join(str(name).split()) for name in raw)
            if not any(names):
                raise InputError(
                    f"The class list '{spec}' has an empty class (look for ';;' or a trailing ';')."
                )
            if not all(names):
                raise InputError(f"The class '{entry}' has an empty name (look for ',,' or a trailing ',').")
            for name in names:
                check_printable(name)
            classes.append(names)
        seen: dict[str, int] = {}
        for index, names in enumerate(classes):
            for name in names:
                key = name.lower()
                if key in seen:
                    raise InputError(
                        f"The class name '{name}' appears twice (classes {seen[key]} and {index}); "
                        "each name may be used once."
                    )
                seen[key] = index
        if len(classes) >= NODATA_LABEL:
            raise InputError(
                f"{len(classes)} classes given; at most {NODATA_LABEL - 1} fit the label format."
            )
        return cls(tuple(classes))

    @cached_property
    def names(self) -> list[str]:
        """All prompt names, class by class (``P`` names; computed once, do not modify)."""
        return [name for names in self.classes for name in names]

    @cached_property
    def name_class(self) -> list[int]:
        """For each prompt name, the index of its class (length ``P``)."""
        return [k for k, names in enumerate(self.classes) for _ in names]

    @cached_property
    def labels(self) -> list[str]:
        """Display name of each class (its first name)."""
        return [names[0] for names in self.classes]

    def __len__(self) -> int:
        return len(self.classes)

    def __str__(self) -> str:
        return ";".join(",".join(names) for names in self.classes)


def check_printable(name: str) -> None:
    """Refuse a class name holding a control character (Unicode category ``Cc`` / ``Cs``, U+FFFE, U+FFFF).

    Whitespace (tabs, newlines) is collapsed to single spaces before this check. Names
    travel into XML (GDAL's ``.aux.xml``, QGIS's ``.qml``, the explorer's export), GeoPackage
    fields and terminals, where such characters are ill-formed or invisible.

    Raises:
        InputError: ``"The class name '<name, escaped>' holds the control character U+XXXX ..."``.

    """
    for position, char in enumerate(name):
        if unicodedata.category(char) in ("Cc", "Cs") or char in "\ufffe\uffff":
            shown = name.encode("unicode_escape").decode("ascii")
            shown = shown if len(shown) <= 60 else shown[:60] + "..."
            raise InputError(
                f"The class name '{shown}' holds the control character U+{ord(char):04X} at position "
                f"{position + 1}; class names must be printable text."
            )
