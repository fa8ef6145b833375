"""Outputs of ``ovearth segment`` on the sample rasters against the code before the runner
refactor (digests in ``tests/data/output_digests.json``, see its script).

Until the GIS outputs (issue 15) the files were byte-identical. Since then the GeoTIFFs are
Cloud-Optimized with class tables and side files, and ``_probs.tif`` is ``_scores.tif``: the
rasters' pixel values must still equal the recorded ones, and every other file its bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.data.output_digests import CASES, environment, run_cases

GOLDEN = json.loads((Path(__file__).parent / "data" / "output_digests.json").read_text())

#: files written since the snapshot, beside each labels GeoTIFF
SIDE_FILES = (".tif.aux.xml", ".qml")


def test_cases_are_the_recorded_ones():
    assert sorted(GOLDEN["cases"]) == sorted(CASES)


@pytest.mark.slow
def test_outputs_equal_the_code_before_the_refactor(samples, tiny_dir, tmp_path):
    if environment() != GOLDEN["environment"]:
        pytest.skip(
            f"digests were computed with {GOLDEN['environment']}; this machine is {environment()} "
            "(float kernels differ); rerun tests/data/output_digests.py on the recorded commit to compare"
        )
    got = run_cases(samples, tmp_path, tiny_dir)
    for case, files in GOLDEN["cases"].items():
        renamed = {name.replace("_probs.tif", "_scores.tif"): digest for name, digest in files.items()}
        new = sorted(set(got[case]) - set(renamed))
        assert all(name.endswith(SIDE_FILES) for name in new), (case, new)
        assert set(renamed) <= set(got[case]), case
        for name, digest in renamed.items():
            key = "pixels" if name.endswith(".tif") else "bytes"
            assert got[case][name][key] == digest[key], f"{case}/{name}"
