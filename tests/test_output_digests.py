"""Outputs of ``ovearth segment`` on the sample rasters are byte-identical to the code before
the runner refactor (digests in ``tests/data/output_digests.json``, see its script)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.data.output_digests import CASES, environment, run_cases

GOLDEN = json.loads((Path(__file__).parent / "data" / "output_digests.json").read_text())


def test_cases_are_the_recorded_ones():
    assert sorted(GOLDEN["cases"]) == sorted(CASES)


@pytest.mark.slow
def test_outputs_byte_identical_to_before_the_refactor(samples, tiny_dir, tmp_path):
    if environment() != GOLDEN["environment"]:
        pytest.skip(
            f"digests were computed with {GOLDEN['environment']}; this machine is {environment()} "
            "(float kernels differ); rerun tests/data/output_digests.py on the recorded commit to compare"
        )
    got = run_cases(samples, tmp_path, tiny_dir)
    for case, files in GOLDEN["cases"].items():
        assert sorted(got[case]) == sorted(files), case
        for name, digest in files.items():
            assert got[case][name]["bytes"] == digest["bytes"], f"{case}/{name}"
