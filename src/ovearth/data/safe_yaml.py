"""The one reader of a user's YAML (protocols, presets, candidates, grids, data-root maps).

``yaml.safe_load`` builds no objects of arbitrary types, but it still lets a small file
cost a lot: nested aliases (``&a [*b, *b, ...]``) stand for a value whose expanded size is
exponential in the file's, which any later walk, copy or message pays; a deep nesting
overflows the composer's recursion; a repeated key silently keeps the last value. So a
user's YAML is read with bounds, each broken one a sentence that names the file:

* at most :data:`MAX_BYTES` bytes, read with that bound (a larger file is never read whole);
* UTF-8 text (with or without a byte-order mark);
* at most :data:`MAX_DEPTH` levels of nesting;
* at most :data:`MAX_NODES` values once every alias is expanded (aliases are allowed
  within that bound: an anchor shared by a few settings is fine); no recursive alias;
* no key twice in one mapping (merge keys ``<<`` keep YAML's override rule).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ..errors import InputError

#: Largest YAML file read, in bytes.
MAX_BYTES = 1 << 20

#: Deepest nesting of mappings and lists.
MAX_DEPTH = 32

#: Most values (scalars, lists, mappings) of a document with its aliases expanded.
MAX_NODES = 10_000


class _Refused(yaml.YAMLError):
    """A bound of this module broken; its text is the end of the sentence."""


class _BoundedLoader(yaml.SafeLoader):
    """``SafeLoader`` with a nesting bound, an expanded-size bound and no duplicate keys."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._checked: set[int] = set()

    def compose_node(self, parent: Node | None, index: Any) -> Node:  # noqa: D102
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise _Refused(f"nested deeper than {MAX_DEPTH} levels (line {mark.line + 1})")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_document(self, node: Node) -> Any:  # noqa: D102
        expanded_size(node)
        return super().construct_document(node)

    def flatten_mapping(self, node: MappingNode) -> None:  # noqa: D102
        # Checked on a mapping's first visit, before merge keys (``<<``) are spliced into it:
        # a merged key that the mapping sets again is YAML's override, not a duplicate.
        if id(node) not in self._checked:
            self._checked.add(id(node))
            seen: set = set()
            for key_node, _ in node.value:
                if not isinstance(key_node, ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node)
                if key in seen:
                    raise _Refused(
                        f"the key '{brief_text(str(key))}' appears twice in one mapping "
                        f"(line {key_node.start_mark.line + 1}); keep one"
                    )
                seen.add(key)
        super().flatten_mapping(node)


def expanded_size(node: Node) -> int:
    """The number of values ``node`` stands for with every alias expanded (at most :data:`MAX_NODES`).

    Shared nodes are counted once per use, but computed once (memoised), so the count
    costs time linear in the file however large the expansion.

    Raises:
        _Refused: more than :data:`MAX_NODES` values, or a value that contains itself.

    """
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(n: Node) -> int:
        if id(n) in sizes:
            return sizes[id(n)]
        if id(n) in open_nodes:
            raise _Refused(f"an alias refers to a value that contains it (line {n.start_mark.line + 1})")
        open_nodes.add(id(n))
        total = 1
        if isinstance(n, SequenceNode):
            total += sum(size(child) for child in n.value)
        elif isinstance(n, MappingNode):
            total += sum(size(k) + size(v) for k, v in n.value)
        if total > MAX_NODES:
            raise _Refused(
                f"more than {MAX_NODES:,} values once its aliases are expanded (line {n.start_mark.line + 1})"
            )
        open_nodes.discard(id(n))
        sizes[id(n)] = total
        return total

    return size(node)


def brief_text(text: str, limit: int = 60) -> str:
    """``text`` cut to ``limit`` characters (``"...(N more)"`` marks a cut)."""
    return text if len(text) <= limit else f"{text[:limit]}...({len(text) - limit} more)"


def parse_yaml(text: str | bytes, where: str) -> Any:
    """The data of one YAML document, read within this module's bounds.

    Args:
        text: the document (bytes are decoded as UTF-8).
        where: the file's name (or a description) that starts every error sentence.

    Raises:
        InputError: ``"<where>: not valid YAML (<reason>)."``, or not UTF-8, or a bound broken.

    """
    if isinstance(text, bytes):
        if len(text) > MAX_BYTES:
            raise InputError(f"{where}: larger than {MAX_BYTES // 1024} KiB; a settings file is far smaller.")
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as error:
            raise InputError(
                f"{where}: not UTF-8 text (byte 0x{text[error.start]:02x} at offset {error.start}); "
                "save it as UTF-8."
            ) from None
    if len(text) > MAX_BYTES:
        raise InputError(f"{where}: larger than {MAX_BYTES // 1024} KiB; a settings file is far smaller.")
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 (a SafeLoader subclass)
    except _Refused as error:
        raise InputError(f"{where}: refused: {error}.") from None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = f", line {mark.line + 1}" if mark is not None else ""
        reason = error.problem or error.context or type(error).__name__
        raise InputError(f"{where}: not valid YAML ({brief_text(reason, 120)}{line}).") from None
    except yaml.YAMLError as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(f"{where}: not valid YAML ({brief_text(first, 120)}).") from None
    except RecursionError:  # a bound above should come first; never a traceback
        raise InputError(f"{where}: refused: nested too deeply.") from None


def read_yaml(path: str | Path, what: str) -> Any:
    """The YAML data of a user's file, read with a size bound (see :func:`parse_yaml`).

    Raises:
        InputError: ``"<path>: no such <what> file."``, unreadable, or as :func:`parse_yaml`.

    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such {what} file.")
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_BYTES + 1)
    except OSError as error:
        raise InputError(f"{path}: cannot read this {what} file ({error.strerror}).") from None
    return parse_yaml(data, str(path))
