"""Hostile input to the command line: YAML bombs, bad environment values, markup in user text.

Each case: a non-zero exit code, one sentence that names the file or variable, no output.
The YAML bombs run in a subprocess under a hard address-space limit (2 GiB): the reader must
refuse them, not be killed (before the bound, the same files ended in "out of host memory").
"""

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from ovearth.data.safe_yaml import MAX_BYTES, MAX_DEPTH, parse_yaml, read_yaml
from ovearth.errors import InputError

from .conftest import run_cli

LIMIT = 2 * 2**30


def bomb(head: list[str], indent: str = "  ") -> str:
    """A 9-level alias bomb (9^9 strings expanded) as the first item of a list, after ``head``."""
    lines = [*head, f'{indent}- - &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, cur in zip("abcdefghi", "bcdefghi", strict=False):
        lines.append(f"{indent}  - &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def run_limited(code: str, *args: str) -> subprocess.CompletedProcess:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))

    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src}
    return subprocess.run(
        [sys.executable, "-c", code, *args], preexec_fn=limit, capture_output=True, text=True, env=env
    )


CLI = "import sys; sys.argv = ['ovearth', *sys.argv[1:]]; from ovearth.cli import main; main()"


@pytest.mark.parametrize("command", ["segment --preset", "eval --dataset-config"])
def test_alias_bomb_in_a_protocol_is_refused_under_a_memory_limit(tmp_path, command):
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb(["name: bomb", "classes:"]))
    assert path.stat().st_size < 1024
    out = tmp_path / "out"
    verb, option = command.split()
    args = [verb, "x.tif", option, str(path), "-o", str(out)]
    if verb == "eval":
        args = [verb, option, str(path), "--data-root", str(tmp_path), "-o", str(out)]
    done = run_limited(CLI, *args)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: {path}: refused: more than 10,000 values once its aliases"), lines
    assert not out.exists()


def test_alias_bomb_in_a_candidates_file_is_refused_under_a_memory_limit(tmp_path):
    path = tmp_path / "candidates.yaml"
    path.write_text(bomb(["building:"]))
    code = (
        "import sys; from ovearth.calibrate.pool import read_candidates\n"
        "try:\n    read_candidates(sys.argv[1])\nexcept Exception as e:\n"
        "    print(type(e).__name__, e); sys.exit(1)"
    )
    done = run_limited(code, str(path))
    assert done.returncode == 1
    sentence = f"InputError {path}: refused: more than 10,000 values once its aliases"
    assert done.stdout.startswith(sentence), done.stdout[:300]


def test_reader_bounds_each_with_one_sentence(tmp_path):
    assert parse_yaml("a: 1\nb: [x, y]\n", "f") == {"a": 1, "b": ["x", "y"]}
    # a shared anchor and a merge key that overrides are fine
    shared = "base: &b {x: 1, y: 2}\nc:\n  <<: *b\n  x: 3\n"
    assert parse_yaml(shared, "f") == {"base": {"x": 1, "y": 2}, "c": {"x": 3, "y": 2}}
    cases = {
        "a: 1\nb: 2\na: 3\n": "f: refused: the key 'a' appears twice in one mapping (line 3); keep one.",
        "base: &b {x: 1}\nc:\n  <<: *b\n  x: 3\n  x: 4\n": "f: refused: the key 'x' appears twice",
        "x: &a [*a]\n": "f: refused: an alias refers to a value that contains it",
        "[" * 5000 + "]" * 5000: f"f: refused: nested deeper than {MAX_DEPTH} levels (line 1).",
        "".join("  " * i + "- \n" for i in range(100)): f"f: refused: nested deeper than {MAX_DEPTH} levels",
        "a: [1, 2\n": "f: not valid YAML (expected ',' or ']', but got '<stream end>', line 2).",
    }
    for text, sentence in cases.items():
        with pytest.raises(InputError) as raised:
            parse_yaml(text, "f")
        assert str(raised.value).startswith(sentence), str(raised.value)
    with pytest.raises(
        InputError, match=r"^f: not UTF-8 text \(byte 0xff at offset 3\); save it as UTF-8\.$"
    ):
        parse_yaml(b"a: \xff\xfe", "f")
    assert parse_yaml("\ufeffa: 1".encode(), "f") == {"a": 1}  # a byte-order mark is fine
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (MAX_BYTES + 10))
    with pytest.raises(InputError, match=r"big.yaml: larger than 1024 KiB"):
        read_yaml(big, "protocol")


def test_a_long_value_is_cut_in_the_sentence(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("name: x\nclasses: [a]\ntitle: [" + ", ".join(["w" * 50] * 3000) + "]\n")
    with pytest.raises(InputError) as raised:
        from ovearth.data.protocols import load_protocol

        load_protocol(path)
    assert len(str(raised.value)) < 250, str(raised.value)
    assert "more)" in str(raised.value)


@pytest.mark.parametrize(
    ("env", "sentence"),
    [
        ({"WORLD_SIZE": "2"}, "error: WORLD_SIZE=2 is set but MASTER_ADDR and MASTER_PORT not"),
        ({"WORLD_SIZE": "two"}, "error: the environment variable WORLD_SIZE='two' must be an integer >= 1."),
        ({"WORLD_SIZE": "2", "RANK": "5", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}, "RANK=5"),
        ({"LOCAL_RANK": "-1"}, "error: the environment variable LOCAL_RANK='-1' must be an integer >= 0."),
        (
            {"OVEARTH_PROGRESS_SECONDS": "abc"},
            "error: the environment variable OVEARTH_PROGRESS_SECONDS='abc'",
        ),
        ({"OVEARTH_PROGRESS_SECONDS": "nan"}, "must be a number of seconds >= 0."),
        ({"OVEARTH_PROGRESS_SECONDS": "-5"}, "must be a number of seconds >= 0."),
    ],
)
def test_bad_environment_values_are_one_sentence(monkeypatch, capsys, tmp_path, env, sentence):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, err = run_cli(
        monkeypatch, capsys, "segment", tmp_path / "x.tif", "--classes", "a", "-o", tmp_path / "o"
    )
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and sentence in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("name", ["no[/x]such.tif", "no[red]such[/red].tif", "[bold]x.tif"])
def test_user_text_is_printed_literally(monkeypatch, capsys, tmp_path, name):
    code, err = run_cli(
        monkeypatch, capsys, "segment", tmp_path / name, "--classes", "a", "-o", tmp_path / "o"
    )
    assert code == 1
    assert err.strip() == f"error: {tmp_path / name}: no such file.", err


def test_a_usage_error_is_clicks_message_and_exit_2(monkeypatch, capsys):
    code, err = run_cli(monkeypatch, capsys, "segment")
    assert code == 2
    assert "Missing argument" in err and "unexpected" not in err, err


def test_help_text_is_not_markup():
    from typer.testing import CliRunner

    from ovearth.cli.app import app

    help_text = CliRunner().invoke(app, ["segment", "--help"], env={"COLUMNS": "300"}).output
    assert "ovearth[parquet]" in " ".join(help_text.split())


def test_a_control_character_in_a_class_name_is_refused(monkeypatch, capsys, tmp_path, samples):
    image = samples / "RGB.byte.tif"
    args = ["segment", image, "--classes", "roof\x07top;road", "-o", tmp_path / "o"]
    code, err = run_cli(monkeypatch, capsys, *args)
    assert code == 1
    assert err.strip() == (
        "error: The class name 'roof\\x07top' holds the control character U+0007 at position 5; "
        "class names must be printable text."
    ), err
    assert not (tmp_path / "o").exists()
    preset = tmp_path / "p.yaml"
    preset.write_text('name: p\nclasses: ["water", "bad\\x1bname"]\n')  # a YAML escape: ESC
    code, err = run_cli(monkeypatch, capsys, "segment", image, "--preset", preset, "-o", tmp_path / "o")
    assert code == 1 and "U+001B" in err and not (tmp_path / "o").exists(), err


def test_no_rich_markup_is_left_in_the_sources():
    """Markup is off on the console: a ``[yellow]...[/]`` string would be printed as it is."""
    import re

    src = Path(__file__).resolve().parents[1] / "src" / "ovearth"
    tag = re.compile(r"\[/?(yellow|red|green|blue|bold|dim|italic)\b[^\]]*\]|\[/\]")
    found = []
    for path in src.rglob("*.py"):
        lines = enumerate(path.read_text().splitlines(), 1)
        found += [f"{path.name}:{i}" for i, line in lines if tag.search(line)]
    assert not found, found
