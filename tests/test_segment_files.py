"""Folder runs of ``segment``: skip-bad, resume, run.json on error, progress lines, torchrun."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import make_image, run_cli

CLASSES = "water;land;cloud"


@pytest.fixture
def folder(tmp_path) -> Path:
    path = tmp_path / "in"
    path.mkdir()
    for seed, name in ((1, "a.png"), (2, "b.png"), (3, "c.png")):
        Image.fromarray(make_image(seed, 40, 56)).save(path / name)
    return path


def segment(monkeypatch, capsys, tiny_dir, inputs, out, *extra):
    return run_cli(
        monkeypatch, capsys, "segment", inputs, "--classes", CLASSES, "--model", tiny_dir, "-o", out, *extra
    )


def test_skip_bad_lists_the_bad_image_and_goes_on(monkeypatch, capsys, tiny_dir, folder, samples, tmp_path):
    shutil.copy(samples / "corrupt.tif", folder / "b_corrupt.tif")  # the header reads, the pixels do not
    shutil.copy(
        samples / "rgb1_fake_nir_epsg3857.tif", folder / "d_grey.tif"
    )  # one band: refused from the header
    out = tmp_path / "out"
    code, err = segment(monkeypatch, capsys, tiny_dir, folder, out)
    assert code == 1 and "d_grey.tif" in err and not out.exists()  # header check: before the model loads
    code, err = segment(monkeypatch, capsys, tiny_dir, folder, out, "--skip-bad")
    assert code == 0, err
    run = json.loads((out / "run.json").read_text())
    assert [Path(e["image"]).name for e in run["images"]] == ["a.png", "b.png", "c.png"]
    problems = {Path(s["image"]).name: s["problem"] for s in run["skipped"]}
    assert set(problems) == {"b_corrupt.tif", "d_grey.tif"}
    assert "corrupt or truncated" in problems["b_corrupt.tif"] and "needs three" in problems["d_grey.tif"]
    assert "2 skipped" in err


def test_run_json_records_an_error_that_stops_the_run(
    monkeypatch, capsys, tiny_dir, folder, samples, tmp_path
):
    shutil.copy(samples / "corrupt.tif", folder / "b_corrupt.tif")
    out = tmp_path / "out"
    code, err = segment(monkeypatch, capsys, tiny_dir, folder, out)
    assert code == 1 and "b_corrupt.tif" in err
    run = json.loads((out / "run.json").read_text())
    assert [Path(e["image"]).name for e in run["images"]] == ["a.png", "b.png"]  # done before it stopped
    assert "corrupt or truncated" in run["error"]
    assert not list(out.glob("b_corrupt*")) and not list(out.glob(".*"))


def test_a_second_run_resumes_and_overwrite_redoes(monkeypatch, capsys, tiny_dir, folder, tmp_path):
    out = tmp_path / "out"
    assert segment(monkeypatch, capsys, tiny_dir, folder, out)[0] == 0
    labels = out / "b_labels.png"
    first = labels.read_bytes()
    os.utime(labels, ns=(1, 1))  # a recomputed output would get a new time
    code, err = segment(monkeypatch, capsys, tiny_dir, folder, out)
    assert code == 0 and "3 reused" in err
    run = json.loads((out / "run.json").read_text())
    assert all(e["reused"] for e in run["images"]) and labels.stat().st_mtime_ns == 1
    (out / "c_overlay.png").unlink()  # an output missing: that image is redone
    code, err = segment(monkeypatch, capsys, tiny_dir, folder, out)
    assert "2 reused" in err and (out / "c_overlay.png").exists()
    code, err = segment(monkeypatch, capsys, tiny_dir, folder, out, "--prob-thd", "0.3")  # another key
    assert code == 0 and "reused" not in err and labels.stat().st_mtime_ns != 1
    os.utime(labels, ns=(1, 1))
    code, err = segment(monkeypatch, capsys, tiny_dir, folder, out, "--prob-thd", "0.3", "--overwrite")
    assert code == 0 and "reused" not in err and labels.stat().st_mtime_ns != 1
    code, err = segment(monkeypatch, capsys, tiny_dir, folder, out)
    assert labels.read_bytes() == first  # back to the first settings: the same bytes


def test_plain_progress_lines_when_stderr_is_not_a_terminal(monkeypatch, capsys, tiny_dir, folder, tmp_path):
    monkeypatch.setenv("OVEARTH_PROGRESS_SECONDS", "0")
    code, err = segment(monkeypatch, capsys, tiny_dir, folder, tmp_path / "out")
    assert code == 0
    lines = [line for line in err.splitlines() if line.startswith("segment:")]
    assert lines[0].startswith("segment: 1/3 (33 %), ") and "/s, ETA " in lines[0]
    assert lines[1].startswith("segment: 2/3 (67 %)") and lines[-1].startswith("segment: done, 3 in ")

    # a whole image with sliding windows reports its windows too (the rate and ETA of that image)
    code, err = segment(
        monkeypatch,
        capsys,
        tiny_dir,
        folder / "a.png",
        tmp_path / "w",
        "--slide-crop",
        "28",
        "--slide-stride",
        "28",
    )
    windows = [line for line in err.splitlines() if line.startswith("segment windows:")]
    assert code == 0 and windows[-1].startswith("segment windows: 4/4 (100 %), "), err


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals")
def test_an_interrupt_exits_130_with_a_line_and_leaves_no_output(tiny_dir, tmp_path):
    """Ctrl+C (SIGINT) mid-run: "interrupted", exit code 130, no output file (was: exit 0, silent)."""
    import signal

    Image.fromarray(make_image(5, 900, 900)).save(tmp_path / "big.png")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "ovearth", "segment", str(tmp_path / "big.png"), "--classes", CLASSES]
    command += ["--model", str(tiny_dir), "--slide-crop", "112", "--slide-stride", "56", "-o", str(out)]
    env = dict(os.environ, OVEARTH_PROGRESS_SECONDS="0.2", OMP_NUM_THREADS="1")
    child = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in child.stderr:  # wait until the windows run, then interrupt
        lines.append(line)
        if line.startswith("segment windows:"):
            child.send_signal(signal.SIGINT)
            break
    rest = child.stderr.read()
    assert child.wait(timeout=60) == 130, "".join(lines) + rest
    assert rest.strip().splitlines()[-1] == "interrupted"
    assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.slow
def test_two_gloo_processes_write_the_same_bytes_as_one(tiny_dir, folder, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    base = [
        sys.executable,
        "-m",
        "ovearth",
        "segment",
        str(folder),
        "--classes",
        CLASSES,
        "--model",
        str(tiny_dir),
    ]
    one = subprocess.run(
        [*base, "-o", str(tmp_path / "one")], env=env, capture_output=True, text=True, timeout=300
    )
    assert one.returncode == 0, one.stderr[-3000:]
    command = [*base, "-o", str(tmp_path / "two")]
    command[1:3] = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "ovearth"]
    two = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    run_one = json.loads((tmp_path / "one" / "run.json").read_text())
    run_two = json.loads((tmp_path / "two" / "run.json").read_text())
    assert run_two["world_size"] == 2 and run_one["world_size"] == 1
    assert [Path(e["image"]).name for e in run_two["images"]] == ["a.png", "b.png", "c.png"]
    names = sorted(p.name for p in (tmp_path / "one").iterdir() if p.name != "run.json")
    assert (
        names == sorted(p.name for p in (tmp_path / "two").iterdir() if p.name != "run.json")
        and len(names) == 6
    )
    for name in names:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    keys = lambda run: [(e["key"], e["presence"]) for e in run["images"]]  # noqa: E731
    assert keys(run_one) == keys(run_two)


def test_each_header_is_opened_once_before_its_pixels(monkeypatch, capsys, tiny_dir, samples, tmp_path):
    """check_files reads the header; the window decision and the reader reuse it."""
    import rasterio

    opened = []
    real = rasterio.open

    def counting(path, *args, **kwargs):
        if "r" == (args[0] if args else kwargs.get("mode", "r")):
            opened.append(Path(str(path)).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(rasterio, "open", counting)
    code, err = segment(monkeypatch, capsys, tiny_dir, samples / "RGB.byte.tif", tmp_path / "out")
    assert code == 0, err
    assert opened.count("RGB.byte.tif") == 2  # the header check, then the pixel read


def test_the_window_decision_is_made_once_per_file(monkeypatch, capsys, tiny_dir, folder, tmp_path):
    """A FilePlan per input: the memory is read and the class table built once, not again in segment_file."""
    import ovearth.run.plan as files

    reads, tables = [], []
    real_memory, real_build = files.available_memory, files.ClassTable.build

    def memory():
        reads.append(1)
        return real_memory()

    def build(*args, **kwargs):
        tables.append(1)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(files, "available_memory", memory)
    monkeypatch.setattr(files.ClassTable, "build", build)
    code, err = segment(monkeypatch, capsys, tiny_dir, folder, tmp_path / "out")
    assert code == 0, err
    count = len(json.loads((tmp_path / "out" / "run.json").read_text())["images"])
    assert count == 3 and len(reads) == count and len(tables) == count


def test_segment_images_api_returns_the_typed_run_the_cli_writes(tiny, folder, samples, tmp_path):
    """The Python call of `segment`: headers checked before the segmentor is made; run.json is the result."""
    from ovearth import Segmentor
    from ovearth.errors import InputError
    from ovearth.run.segment_files import FileOptions, ImageResult, SegmentRun, segment_images

    made = []

    def make() -> Segmentor:
        made.append(1)
        return Segmentor(tiny, CLASSES)

    shutil.copy(samples / "rgb1_fake_nir_epsg3857.tif", folder / "d_grey.tif")
    with pytest.raises(InputError, match="d_grey.tif"):
        segment_images([folder], tmp_path / "out", make)
    assert not made and not (tmp_path / "out").exists()  # refused before the model was needed
    run = segment_images([folder], tmp_path / "out", make, FileOptions(skip_bad=True), {"note": "api"})
    assert isinstance(run, SegmentRun) and made == [1]
    assert [Path(r.image).name for r in run.images] == ["a.png", "b.png", "c.png"]
    assert all(isinstance(r, ImageResult) and not r.reused and r.views is None for r in run.images)
    assert Path(run.images[0].outputs["labels"]).name == "a_labels.png"
    assert [Path(s["image"]).name for s in run.skipped] == ["d_grey.tif"]
    written = json.loads((tmp_path / "out" / "run.json").read_text())
    assert written == json.loads(json.dumps(run.to_dict()))  # the result is the file
    assert list(written)[:2] == ["ovearth", "command"] and written["note"] == "api"
    assert "views" not in written["images"][0]  # only windowed entries carry the window counts
    again = segment_images([folder], tmp_path / "out", Segmentor(tiny, CLASSES), FileOptions(skip_bad=True))
    assert again.reused == 3 and [r.key for r in again.images] == [r.key for r in run.images]
