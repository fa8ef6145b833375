"""The import graph runs one way: leaves <- model <- refine <- segment <- data <- probe, train <- run <- cli.

Every ``import`` / ``from ... import`` of ``src/ovearth`` is read with ``ast`` (also the
ones inside functions); a package may import its own modules and those of lower layers
only, and no name starting with ``_`` crosses a package boundary.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "ovearth"

#: layer of each package or top-level module (leaves, layer 0, may import each other)
LAYERS = {
    "constants": 0,
    "errors": 0,
    "environment": 0,
    "metrics": 0,
    "viz": 0,
    "model": 1,
    "refine": 2,
    "segment": 3,
    "data": 4,
    "probe": 5,
    "train": 5,
    "calibrate": 5,
    "run": 6,
    "explore": 6.5,  # the explorer's web server: above run (it writes segment's files), below cli
    "cli": 7,
    "__main__": 8,
}


def _unit(module: str) -> str | None:
    """``ovearth.segment.files`` -> ``segment``; the package root -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "ovearth" else None


def _imports():
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC.parent).with_suffix("")
        module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        package = module if rel.name == "__init__" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                names = [a.name for a in node.names]
                yield module, target, names
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    yield module, alias.name, []


def test_imports_run_one_way_and_no_private_name_crosses_a_package():
    upward, private = [], []
    for source, target, names in _imports():
        src_unit, dst_unit = _unit(source), _unit(target)
        if src_unit is None or dst_unit is None or src_unit == dst_unit:
            continue
        assert src_unit in LAYERS and dst_unit in LAYERS, f"{source} or {target}: add its layer to LAYERS"
        if LAYERS[dst_unit] > LAYERS[src_unit] or (LAYERS[dst_unit] == LAYERS[src_unit] > 0):
            upward.append(f"{source} imports {target}")
        private += [
            f"{source} imports {target}.{n}" for n in names if n.startswith("_") and n != "__version__"
        ]
    assert upward == [] and private == []


def test_the_walk_sees_relative_and_nested_imports():
    found = {(s, t) for s, t, _ in _imports()}
    assert ("ovearth.run.files", "ovearth.segment.segmentor") in found  # relative, two dots
    assert ("ovearth.cli.images", "ovearth.run.segment_files") in found  # inside a function


def test_light_imports_load_neither_torch_nor_transformers():
    """``import ovearth`` / ``ovearth.errors`` and ``ovearth --help`` stay light (issue 23: ~4 s before)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import ovearth, ovearth.errors\n"
        "heavy = sorted(m for m in ('torch', 'transformers') if m in sys.modules)\n"
        "sys.argv = ['ovearth', '--help']\n"
        "from ovearth.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('HEAVY', heavy, sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "HEAVY [] []", done.stdout[-500:]


def test_the_view_loop_is_only_in_accumulate():
    """``ViewEngine.run`` is called by ``segment/accumulate.py`` alone: one view loop (issue 23)."""
    calls = []
    for path in SRC.rglob("*.py"):
        if path.relative_to(SRC).as_posix() == "segment/accumulate.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "run"
                and isinstance(node.func.value, ast.Attribute | ast.Name)
                and getattr(node.func.value, "attr", getattr(node.func.value, "id", "")) == "engine"
            ):
                calls.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert not calls, calls
    segment = SRC / "segment"
    assert all(len(p.read_text().splitlines()) <= 400 for p in segment.glob("*.py"))
