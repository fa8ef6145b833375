"""The QGIS Processing provider (``qgis_plugin/``) in a real, headless QGIS.

``qgis_process run ovearth:segment`` on a sample raster writes the labels ``ovearth segment``
writes; ``ovearth:vectorize`` the CLI's polygons; run through PyQGIS (``qgis_plugin/headless.py``)
the outputs load into the project with the shipped style, and a cancelled run ends ovearth and
leaves the output folder as it was. Needs Debian's QGIS (``apt-get install qgis python3-qgis``,
tested with 3.22); skipped with the reason otherwise (``.ci/run`` does not install it: too heavy).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "qgis_plugin"
CLASSES = "water;building,house;tree"
SYSTEM_PYTHON = "/usr/bin/python3"


def qgis_process() -> list[str] | None:
    """The qgis_process command that works (Debian 12's wrapper passes an option 3.22 rejects)."""
    found = shutil.which("qgis_process")
    if found is None:
        return None
    for candidate in (found, found + ".bin"):
        if not os.access(candidate, os.X_OK):
            continue
        env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
        done = subprocess.run([candidate, "--version"], capture_output=True, text=True, env=env, timeout=120)
        if done.returncode == 0:
            return [candidate]
    return None


QGIS_PROCESS = qgis_process()
pytestmark = [
    pytest.mark.skipif(
        QGIS_PROCESS is None, reason="QGIS is not installed (apt-get install qgis python3-qgis)"
    ),
]


@pytest.fixture(scope="module")
def qgis_env(tmp_path_factory) -> dict[str, str]:
    """A QGIS profile of its own (HOME), offscreen, the plugin found and enabled, ovearth = this Python."""
    home = tmp_path_factory.mktemp("qgis-home")
    env = {
        **os.environ,
        "HOME": str(home),
        "XDG_RUNTIME_DIR": str(home),
        "QT_QPA_PLATFORM": "offscreen",
        "QGIS_PLUGINPATH": str(PLUGIN),
        "OVEARTH_EXECUTABLE": sys.executable,  # the environment's Python: run as python -m ovearth
        # QGIS's embedded Python finds its home from PATH: an activated virtualenv first breaks it
        "PATH": os.pathsep.join([str(Path(QGIS_PROCESS[0]).parent), os.environ.get("PATH", "")]),
    }
    env.pop("VIRTUAL_ENV", None)
    env.pop("XDG_CONFIG_HOME", None)
    env.pop("XDG_DATA_HOME", None)
    enable = [*QGIS_PROCESS, "plugins", "enable", "ovearth_qgis"]
    enabled = subprocess.run(enable, capture_output=True, text=True, env=env, timeout=300)
    assert enabled.returncode == 0, enabled.stdout + enabled.stderr
    return env


def run_qgis_process(env, algorithm: str, **parameters) -> dict:
    command = [*QGIS_PROCESS, "--json", "run", algorithm, "--"]
    command += [f"{name}={value}" for name, value in parameters.items()]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout[done.stdout.index("{") :])


@pytest.fixture(scope="module")
def cli_run(samples, tiny_dir, tmp_path_factory) -> Path:
    """``ovearth segment`` of the sample with polygons: the reference."""
    out = tmp_path_factory.mktemp("cli")
    command = [sys.executable, "-m", "ovearth", "segment", str(samples / "RGB.byte.tif"), "-o", str(out)]
    command += ["--classes", CLASSES, "--model", str(tiny_dir), "--device", "cpu", "--vector", "gpkg"]
    subprocess.run(command, check=True, capture_output=True, timeout=600)
    return out


def pixels(path) -> np.ndarray:
    with rasterio.open(path) as dataset:
        return dataset.read()


def test_provider_lists_its_algorithms(qgis_env):
    listed = subprocess.run([*QGIS_PROCESS, "list"], capture_output=True, text=True, env=qgis_env, timeout=99)
    for algorithm in ("ovearth:segment", "ovearth:vectorize", "ovearth:evaluate"):
        assert algorithm in listed.stdout
    helped = subprocess.run(
        [*QGIS_PROCESS, "help", "ovearth:segment"], capture_output=True, text=True, env=qgis_env, timeout=300
    )
    assert "OVEARTH_EXECUTABLE" in helped.stdout and "CLASSES" in helped.stdout


def test_qgis_process_segment_writes_the_labels_of_the_cli(qgis_env, samples, tiny_dir, cli_run, tmp_path):
    out = tmp_path / "qgis"
    answer = run_qgis_process(
        qgis_env,
        "ovearth:segment",
        INPUT=samples / "RGB.byte.tif",
        CLASSES=CLASSES,
        MODEL=tiny_dir,
        DEVICE="cpu",
        POLYGONS=1,
        OUTPUT_FOLDER=out,
    )
    results = answer["results"]
    assert results["LABELS"] == str(out / "RGB.byte_labels.tif")
    assert results["POLYGONS"] == str(out / "RGB.byte_labels.gpkg")
    np.testing.assert_array_equal(pixels(results["LABELS"]), pixels(cli_run / "RGB.byte_labels.tif"))
    assert (out / "RGB.byte_labels.qml").read_text() == (cli_run / "RGB.byte_labels.qml").read_text()

    polygons = run_qgis_process(
        qgis_env, "ovearth:vectorize", INPUT=results["LABELS"], OUTPUT=tmp_path / "polygons.gpkg"
    )
    import pyogrio

    assert polygons["results"]["OUTPUT"] == str(tmp_path / "polygons.gpkg")
    mine = pyogrio.read_info(str(tmp_path / "polygons.gpkg"))
    theirs = pyogrio.read_info(str(cli_run / "RGB.byte_labels.gpkg"))
    assert mine["features"] == theirs["features"] > 0


def headless(env, algorithm: str, parameters: dict, *options: str) -> dict:
    command = [SYSTEM_PYTHON, str(PLUGIN / "headless.py"), algorithm, json.dumps(parameters), *options]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def pyqgis():
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import qgis.core"], capture_output=True, timeout=120)
    if probe.returncode != 0:
        pytest.skip(f"python3-qgis cannot be imported by {SYSTEM_PYTHON} (apt-get install python3-qgis)")


def test_outputs_load_into_the_project_with_the_shipped_style(pyqgis, qgis_env, samples, tiny_dir, tmp_path):
    parameters = {
        "INPUT": str(samples / "RGB.byte.tif"),
        "CLASSES": CLASSES,
        "MODEL": str(tiny_dir),
        "DEVICE": "cpu",
        "POLYGONS": True,
        "OUTPUT_FOLDER": str(tmp_path / "out"),
    }
    answer = headless(qgis_env, "ovearth:segment", parameters, "--render", str(tmp_path / "map.png"))
    assert answer["ok"] and answer["progress"][-1] == 100
    layers = {layer["name"]: layer for layer in answer["layers"]}
    assert layers["RGB.byte labels"]["renderer"] == "paletted"
    assert layers["RGB.byte labels"]["classes"] == ["water", "building", "tree", "unclassified", "nodata"]
    assert layers["RGB.byte polygons"]["renderer"] == "categorizedSymbol"
    assert layers["RGB.byte polygons"]["classes"][:3] == ["water", "building", "tree"]
    assert (tmp_path / "map.png").stat().st_size > 1000


def test_cancel_stops_ovearth_and_leaves_no_output(pyqgis, qgis_env, samples, tiny_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("kept")
    parameters = {
        "INPUT": str(samples / "RGB.byte.tif"),
        "CLASSES": CLASSES,
        "MODEL": str(tiny_dir),
        "DEVICE": "cpu",
        "SLIDE_CROP": 336,
        "SLIDE_STRIDE": 224,  # tens of seconds on a CPU: cancelled mid-run
        "SCORES": True,
        "OUTPUT_FOLDER": str(out),
    }
    answer = headless(qgis_env, "ovearth:segment", parameters, "--cancel-after", "6", "--cancel-on-part")
    assert not answer["ok"] and answer["cancelled"]
    assert any(error.startswith("cancelled:") for error in answer["errors"])
    assert answer["seconds"] < 6 + 5 + 10
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(out) not in ps, "ovearth still runs"


def test_qgis_process_evaluate_gives_the_metrics_of_the_cli(qgis_env, tiny_dir, tmp_path):
    """``ovearth:evaluate`` on a fake LoveDA in its real layout: the metrics of ``ovearth eval``."""
    from tests.data.make_synthetic import make_dataset

    make_dataset("loveda", tmp_path, num_images=2, size=(40, 48))
    root = tmp_path / "loveda"
    cli = tmp_path / "cli"
    command = [sys.executable, "-m", "ovearth", "eval", "--dataset", "loveda", "--data-root", str(root)]
    command += ["--model", str(tiny_dir), "--device", "cpu", "-o", str(cli)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "qgis"
    answer = run_qgis_process(
        qgis_env,
        "ovearth:evaluate",
        DATA_ROOT=root,
        DATASET="loveda",
        MODEL=tiny_dir,
        DEVICE="cpu",
        OUTPUT_FOLDER=out,
    )
    theirs = json.loads((cli / "metrics.json").read_text())
    results = answer["results"]
    assert results["METRICS"] == str(out / "metrics.json")
    mine = json.loads((out / "metrics.json").read_text())
    assert mine["mIoU"] == theirs["mIoU"] and mine["per_class"] == theirs["per_class"]
    assert results["MIOU"] == pytest.approx(theirs["mIoU"])
