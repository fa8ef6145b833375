"""The QGIS plugin's parts without QGIS: ``commands.py``, ``runner.py``, ``outputs.py``.

Command lines from the algorithms' choices, progress lines to a percentage, the executable
lookup, and running: a fake long-running executable checks the kill mechanics (the whole
process group ends, the run's new files go, earlier files stay), and real ``ovearth segment``
runs check that the runner writes the CLI's labels and that a cancelled run leaves nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio

PLUGIN = Path(__file__).resolve().parents[1] / "qgis_plugin"
sys.path.insert(0, str(PLUGIN))

from ovearth_qgis import commands, errors, outputs, runner  # noqa: E402 (the plugin folder is not a package of the project)

OVEARTH = [sys.executable, "-m", "ovearth"]


# --------------------------------------------------------------------------- command lines


def test_segment_command_maps_every_choice():
    options = commands.SegmentOptions(
        image="/data/scene one.tif",
        output="/out",
        classes="building,house;road",
        model="/models/sam3",
        device="cuda:1",
        prob_thd="0.2,building=0.4",
        confidence_threshold=0.3,
        slide_crop=1008,
        slide_stride=672,
        windowed=True,
        bands="4, 3, 2",
        scores=True,
        vector=True,
        objects=True,
        min_area=25.0,
        simplify=0.5,
        overwrite=True,
        extra="--refine 'smooth:a=0.2' --zoom k=4,scale=2",
    )
    assert commands.segment_command(["ovearth"], options) == [
        "ovearth",
        "segment",
        "/data/scene one.tif",
        "-o",
        "/out",
        "--classes",
        "building,house;road",
        "--model",
        "/models/sam3",
        "--device",
        "cuda:1",
        "--prob-thd",
        "0.2,building=0.4",
        "--confidence-threshold",
        "0.3",
        "--slide-crop",
        "1008",
        "--slide-stride",
        "672",
        "--min-area",
        "25",
        "--simplify",
        "0.5",
        "--windowed",
        "--bands",
        "4,3,2",
        "--scores",
        "--vector",
        "gpkg",
        "--objects",
        "--overwrite",
        "--refine",
        "smooth:a=0.2",
        "--zoom",
        "k=4,scale=2",
    ]


def test_segment_command_leaves_defaults_to_ovearth():
    plain = commands.SegmentOptions(image="a.tif", output="o", preset="loveda", model="", device=" ")
    assert commands.segment_command(["x"], plain) == [
        "x",
        "segment",
        "a.tif",
        "-o",
        "o",
        "--preset",
        "loveda",
    ]
    whole = commands.SegmentOptions(image="a.tif", output="o", classes="a;b", windowed=False, slide_crop=0)
    assert commands.segment_command(["x"], whole)[-3:] == ["--slide-crop", "0", "--whole"]
    for classes, preset in (("", ""), ("a;b", "loveda")):
        with pytest.raises(errors.OvearthError, match="either classes"):
            commands.segment_command(
                ["x"], commands.SegmentOptions("a.tif", "o", classes=classes, preset=preset)
            )
    with pytest.raises(errors.OvearthError, match="extra options"):
        commands.segment_command(
            ["x"], commands.SegmentOptions("a.tif", "o", classes="a", extra="--refine 'x")
        )


def test_vectorize_and_eval_commands():
    command = commands.vectorize_command(
        ["ov"], "l.tif", "p.gpkg", classes="a;b", scores="s.tif", min_area=4.0
    )
    assert command == [
        "ov",
        "vectorize",
        "l.tif",
        "-o",
        "p.gpkg",
        "--classes",
        "a;b",
        "--scores",
        "s.tif",
        "--min-area",
        "4",
    ]
    assert commands.vectorize_command(["ov"], "l.tif", "p.gpkg") == [
        "ov",
        "vectorize",
        "l.tif",
        "-o",
        "p.gpkg",
    ]
    command = commands.eval_command(
        ["ov"],
        "/data",
        "/out",
        dataset="loveda",
        model="m",
        limit=5,
        confidence_threshold=0.25,
        save_predictions=True,
    )
    assert command == [
        "ov",
        "eval",
        "--data-root",
        "/data",
        "-o",
        "/out",
        "--dataset",
        "loveda",
        "--model",
        "m",
        "--limit",
        "5",
        "--confidence-threshold",
        "0.25",
        "--save-predictions",
    ]
    assert commands.eval_command(["ov"], "/d", "/o", dataset_config="my.yaml")[-2:] == [
        "--dataset-config",
        "my.yaml",
    ]
    with pytest.raises(errors.OvearthError, match="either a built-in"):
        commands.eval_command(["ov"], "/d", "/o")


def test_output_stem():
    assert outputs.output_stem("/data/RGB.byte.tif") == "RGB.byte"
    assert outputs.output_stem(r"C:\data\scene.TIF") == "scene"
    assert outputs.output_stem("https://host/cog/scene.tif?token=1") == "scene"


# --------------------------------------------------------------------------- progress


def test_progress_lines_become_a_percentage():
    parser = runner.ProgressParser()
    assert parser.feed("loading the model") is None
    assert parser.feed("error: something") is None
    assert parser.feed("segment: 3/10 (30 %), 0.5/s, ETA 0m14s") == pytest.approx(30)
    assert parser.feed("segment windows: 5/10 (50 %), 2/s, ETA 0m03s") == pytest.approx(35)  # within image 4
    assert parser.feed("segment: 4/10 (40 %), 0.5/s, ETA 0m12s") == pytest.approx(40)
    assert parser.feed("segment: 4/? , 0.5/s") is None  # no total: no share
    assert parser.feed("segment windows: 1/10") == pytest.approx(41)
    assert parser.feed("segment: 2/10 (20 %)") == pytest.approx(41)  # never backwards
    assert parser.feed("eval loveda: 7/7 (100 %), 1/s, ETA 0m00s, running mIoU 41.20") == 100
    assert runner.ProgressParser().feed("segment: done, 1 in 0m21s") == 100


def test_error_message_is_the_error_line():
    assert runner.error_message(["a", "error: no such file x.tif", "b"], 2) == "no such file x.tif"
    assert (
        runner.error_message(["Traceback", "Boom"], 1) == "ovearth stopped with exit code 1: Traceback | Boom"
    )


def test_child_environment_drops_qgis_python_and_asks_frequent_progress():
    env = runner.child_environment({"PYTHONHOME": "/qgis", "PYTHONPATH": "/qgis/lib", "PATH": "/bin"})
    assert "PYTHONHOME" not in env and "PYTHONPATH" not in env
    assert env["PATH"] == "/bin" and env["OVEARTH_PROGRESS_SECONDS"] == "1" and env["PYTHONUNBUFFERED"] == "1"
    assert runner.child_environment({"OVEARTH_PROGRESS_SECONDS": "5"})["OVEARTH_PROGRESS_SECONDS"] == "5"


# --------------------------------------------------------------------------- the executable


def make_executable(path: Path, body: str) -> Path:
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return path


def test_executable_from_setting_variable_or_path(tmp_path):
    script = make_executable(tmp_path / "ovearth", "")
    env_dir = tmp_path / "env"
    (env_dir / "bin").mkdir(parents=True)
    in_env = make_executable(env_dir / "bin" / "ovearth", "")
    python = make_executable(tmp_path / "python3.11", "")
    assert commands.find_executable(str(script), environ={}) == [str(script)]
    assert commands.find_executable(str(env_dir), environ={}) == [str(in_env)]
    assert commands.find_executable(str(python), environ={}) == [str(python), "-m", "ovearth"]
    assert commands.find_executable("", environ={"OVEARTH_EXECUTABLE": str(script)}) == [str(script)]
    assert commands.find_executable(None, environ={"OVEARTH_EXECUTABLE": "", "PATH": str(tmp_path)}) == [
        str(script)
    ]
    assert commands.find_executable(str(script), environ={"OVEARTH_EXECUTABLE": "/nowhere"}) == [str(script)]
    with pytest.raises(
        errors.ExecutableNotFound, match="OVEARTH_EXECUTABLE names /nowhere/ovearth, which does"
    ):
        commands.find_executable(None, environ={"OVEARTH_EXECUTABLE": "/nowhere/ovearth"})
    with pytest.raises(errors.ExecutableNotFound, match="ovearth was not found: set the ovearth executable"):
        commands.find_executable(None, environ={"PATH": str(tmp_path / "empty")})
    plain = tmp_path / "not-executable"
    plain.write_text("")
    with pytest.raises(errors.ExecutableNotFound, match="not executable"):
        commands.find_executable(str(plain), environ={})


# --------------------------------------------------------------------------- running (fake ovearth)

#: A fake ovearth: progress lines, a temporary and a finished output, a child in its process
#: group, then it waits (ignoring interrupts when asked, so that only the kill ends it).
FAKE = """
import os, signal, subprocess, sys, time
out, mode, pidfile = sys.argv[1], sys.argv[2], sys.argv[3]
if mode == "stubborn":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
open(pidfile, "w").write(f"{os.getpid()} {child.pid}")
open(os.path.join(out, ".scene_labels.x1.part.tif"), "w").write("half")
open(os.path.join(out, "scene_overlay.png"), "w").write("done")
for i in range(1, 4):
    print(f"segment: {i}/10 ({10 * i} %), 1/s, ETA 0m0{10 - i}s", file=sys.stderr, flush=True)
if mode == "fail":
    print("error: the classes are empty.", file=sys.stderr, flush=True)
    sys.exit(2)
if mode == "ok":
    sys.exit(0)
time.sleep(120)
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (not yet reaped by its parent) counts as ended
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


@pytest.fixture
def fake(tmp_path, monkeypatch):
    # the fake's child keeps the output pipe open after the fake ends: wait for it briefly
    monkeypatch.setattr(runner, "PIPE_GRACE_SECONDS", 0.2)
    return make_executable(tmp_path / "fake-ovearth", FAKE)


@pytest.mark.skipif(os.name == "nt", reason="POSIX process groups")
@pytest.mark.parametrize("mode", ["polite", "stubborn"])
def test_cancel_ends_the_process_group_and_removes_the_new_files(fake, tmp_path, mode):
    out = tmp_path / "out"
    out.mkdir()
    (out / "scene_labels.tif").write_text("an earlier run's")  # there before: kept
    (out / "notes.txt").write_text("the user's")
    progress = []
    guard = outputs.OutputGuard(str(out), prefixes=("scene_",), names=("run.json",))

    def cancel() -> bool:
        return len(progress) >= 3

    start = time.monotonic()
    with pytest.raises(errors.Cancelled):
        runner.run_ovearth(
            [str(fake), str(out), mode, str(tmp_path / "pids")],
            on_progress=progress.append,
            is_cancelled=cancel,
            cleanup=guard,
            grace_seconds=0.3,
        )
    assert time.monotonic() - start < 20
    assert progress == [10, 20, 30]
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "scene_labels.tif"]
    assert (out / "scene_labels.tif").read_text() == "an earlier run's"
    pids = [int(p) for p in (tmp_path / "pids").read_text().split()]
    time.sleep(0.2)
    assert not any(alive(pid) for pid in pids), "a process of the group survived the cancel"


def test_failure_raises_the_error_line(fake, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(errors.OvearthFailed, match=r"^the classes are empty\.$") as failed:
        runner.run_ovearth([str(fake), str(out), "fail", str(tmp_path / "pids")])
    assert failed.value.returncode == 2
    os.kill(int((tmp_path / "pids").read_text().split()[1]), signal.SIGKILL)  # the fake's orphan
    assert failed.value.lines[:3] == [
        f"segment: {i}/10 ({10 * i} %), 1/s, ETA 0m0{10 - i}s" for i in (1, 2, 3)
    ]


def test_success_reports_lines_and_ends_at_100(fake, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    progress = []
    result = runner.run_ovearth(
        [str(fake), str(out), "ok", str(tmp_path / "pids")], on_progress=progress.append
    )
    assert result.returncode == 0 and len(result.lines) == 3 and progress == [10, 20, 30, 100]
    _, child = (int(p) for p in (tmp_path / "pids").read_text().split())
    os.kill(child, signal.SIGKILL)  # the fake's orphan


def test_a_missing_executable_is_one_sentence(tmp_path):
    with pytest.raises(errors.ExecutableNotFound, match="could not start"):
        runner.run_ovearth([str(tmp_path / "nothing")])


@pytest.mark.skipif(os.name == "nt", reason="POSIX process groups")
def test_an_error_in_a_callback_still_stops_ovearth(fake, tmp_path):
    out = tmp_path / "out"
    out.mkdir()

    def broken(_percent):
        raise RuntimeError("callback bug")

    with pytest.raises(RuntimeError, match="callback bug"):
        runner.run_ovearth(
            [str(fake), str(out), "polite", str(tmp_path / "p")], on_progress=broken, grace_seconds=0.3
        )
    pids = [int(p) for p in (tmp_path / "p").read_text().split()]
    time.sleep(0.2)
    assert not any(alive(pid) for pid in pids)


def test_palette_from_qml(tmp_path):
    style = tmp_path / "s.qml"
    style.write_text(
        '<qgis><pipe><rasterrenderer type="paletted"><colorPalette>'
        '<paletteEntry value="0" color="#1f77b4" alpha="255" label="water" />'
        '<paletteEntry value="254" color="#dcdcdc" alpha="255" label="unclassified" />'
        "</colorPalette></rasterrenderer></pipe></qgis>"
    )
    assert outputs.palette_from_qml(str(style)) == [(0, "#1f77b4", "water"), (254, "#dcdcdc", "unclassified")]
    assert outputs.palette_from_qml(str(tmp_path / "missing.qml")) == []


# --------------------------------------------------------------------------- running (real ovearth)

CLASSES = "water;building,house;tree"


def cli_labels(image: Path, out: Path, tiny_dir: Path, *extra: str) -> np.ndarray:
    command = [*OVEARTH, "segment", str(image), "-o", str(out), "--classes", CLASSES]
    command += ["--model", str(tiny_dir), "--device", "cpu", *extra]
    subprocess.run(command, check=True, capture_output=True, timeout=600)
    with rasterio.open(out / f"{image.stem}_labels.tif") as dataset:
        return dataset.read()


def test_runner_writes_the_labels_of_the_cli(samples, tiny_dir, tmp_path):
    image = samples / "RGB.byte.tif"
    expected = cli_labels(image, tmp_path / "cli", tiny_dir)
    options = commands.SegmentOptions(
        image=str(image),
        output=str(tmp_path / "plugin"),
        classes=CLASSES,
        model=str(tiny_dir),
        device="cpu",
        vector=True,
    )
    progress = []
    runner.run_ovearth(commands.segment_command(OVEARTH, options), on_progress=progress.append)
    written = outputs.segment_outputs(options.output, options.image)
    assert Path(written["labels"]) == tmp_path / "plugin" / "RGB.byte_labels.tif"
    assert Path(written["style"]).is_file() and Path(written["polygons"]).is_file()
    with rasterio.open(written["labels"]) as dataset:
        np.testing.assert_array_equal(dataset.read(), expected)
    assert progress[-1] == 100


def test_cancelled_real_run_leaves_no_output(samples, tiny_dir, tmp_path):
    """Cancel mid-run (sliding windows: tens of seconds on CPU): the folder is as it was, ovearth ended."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("kept")
    options = commands.SegmentOptions(
        image=str(samples / "RGB.byte.tif"),
        output=str(out),
        classes=CLASSES,
        model=str(tiny_dir),
        device="cpu",
        slide_crop=336,
        slide_stride=224,
        scores=True,
    )
    guard = outputs.OutputGuard(str(out), prefixes=("RGB.byte_",), names=("run.json",))
    start = time.monotonic()
    with pytest.raises(errors.Cancelled):
        runner.run_ovearth(
            commands.segment_command(OVEARTH, options),
            is_cancelled=lambda: (
                time.monotonic() - start > 6 or any(p.name.startswith(".") for p in out.iterdir())
            ),
            cleanup=guard,
        )
    assert time.monotonic() - start < 6 + runner.GRACE_SECONDS + 10
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(out) not in ps, "ovearth still runs"
