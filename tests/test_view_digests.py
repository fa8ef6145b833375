"""Labels, class maps, presence and instances on a grid of view settings, bit for bit as recorded
before the view loop became one engine (``tests/data/view_digests.py`` made the JSON)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.data.view_digests import CASES, environment, run_cases

GOLDEN = json.loads((Path(__file__).parent / "data" / "view_digests.json").read_text())


def test_cases_are_the_recorded_ones():
    assert sorted(GOLDEN["cases"]) == sorted([*CASES, "confidences"])


@pytest.fixture
def recorded_threads():
    """The recorded thread count (sums are split by thread, so the last bits depend on it)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(GOLDEN["environment"]["threads"])
    yield
    torch.set_num_threads(saved)


@pytest.mark.slow
def test_view_outputs_equal_the_recorded_digests(tiny_dir, recorded_threads):
    if environment() != GOLDEN["environment"]:
        pytest.skip(f"digests were computed with {GOLDEN['environment']}; this machine is {environment()}")
    got = run_cases(tiny_dir)
    for case, digests in GOLDEN["cases"].items():
        assert got[case] == digests, case
