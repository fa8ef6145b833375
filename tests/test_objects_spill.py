"""Objects of a windowed scene spilled to disk as they settle: memory bounded, the same objects file."""

from __future__ import annotations

import numpy as np
import pyogrio
import pytest

from ovearth import Segmentor
from ovearth.data.objects import write_objects
from ovearth.data.output import remove_stale_parts
from ovearth.run.scene import segment_scene
from ovearth.segment import instances as instances_module
from ovearth.segment.instances import Instance, ObjectSpill, StreamingDedup, deduplicate

from .test_scene import CLASSES, write_scene

WINDOWS = {"slide_crop": 128, "slide_stride": 96, "confidence_threshold": 0.05, "prob_thd": 0.3}


def same_instances(a: list[Instance], b: list[Instance]) -> bool:
    """Equal fields and mask bits, in the same order."""
    fields = [(i.class_index, i.name, i.score, i.box) for i in a]
    return fields == [(i.class_index, i.name, i.score, i.box) for i in b] and all(
        x.mask.dtype == y.mask.dtype and np.array_equal(x.mask, y.mask) for x, y in zip(a, b, strict=True)
    )


def synthetic_rows(seed: int) -> tuple[list[list[Instance]], list[int]]:
    """Instances seen by rows of windows 40 rows high every 24 rows (duplicates across rows)."""
    rng = np.random.default_rng(seed)
    objects = []
    for _ in range(300):
        y, x = int(rng.integers(0, 470)), int(rng.integers(0, 100))
        h, w = int(rng.integers(2, 14)), int(rng.integers(2, 14))
        mask = rng.random((h, w)) < 0.8
        mask[0, 0] = mask[-1, -1] = True  # the box is the mask's extent
        objects.append((int(rng.integers(0, 3)), (x, y, x + w, y + h), mask))
    tops = list(range(0, 480, 24))
    rows = [
        [
            Instance(k, f"n{k}", float(rng.choice([0.3, 0.5, rng.random()])), box, mask)  # ties too
            for k, box, mask in objects
            if top <= box[1] and box[3] <= top + 40
        ]
        for top in tops
    ]
    return rows, tops


@pytest.mark.parametrize("seed", [0, 1])
def test_spilled_objects_stay_bounded_and_equal_deduplicate(tmp_path, seed):
    rows, tops = synthetic_rows(seed)
    everything = [one for row in rows for one in row]
    held = []
    with ObjectSpill(tmp_path, "scene_labels") as spill:
        assert spill.path.parent == tmp_path and spill.path.name.startswith(".scene_labels.")
        stream = StreamingDedup(spill=spill)
        for r, row in enumerate(rows):
            stream.add(row)
            stream.settle(tops[r + 1] if r + 1 < len(tops) else np.inf)
            recent = sum(len(x) for x in rows[max(0, r - 1) : r + 1])
            assert stream.kept == []  # settled objects are on disk, not in memory
            assert len(stream.pending) <= recent  # only groups that may still meet later windows
            held.append(len(stream.pending))
        got = list(stream.finish())
        assert len(spill) == len(got)
    expected = deduplicate(everything)
    assert len(expected) < len(everything)  # there were duplicates to remove
    assert same_instances(got, expected)
    assert max(held) < len(everything) / 10  # memory does not grow with the scene's objects
    assert list(tmp_path.iterdir()) == []  # the spill is removed


def test_a_killed_runs_spill_is_a_stale_part(tmp_path):
    spill = ObjectSpill(tmp_path, "scene_labels")
    spill.add(0, Instance(1, "tree", 0.5, (2, 3, 5, 4), np.array([[True, False, True]])))
    spill._file.close()  # as if the process died: the file stays
    assert remove_stale_parts(tmp_path) == 1
    assert list(tmp_path.iterdir()) == []


def test_windowed_objects_through_a_spill_write_the_same_file(tiny, tmp_path, monkeypatch):
    """segment_scene with a spill: the objects of the in-memory path; the same file written."""
    path = write_scene(tmp_path / "scene.tif", 420, 300)
    seg = Segmentor(tiny, CLASSES, **WINDOWS)
    names = list(seg.vocabulary.labels)
    listed: list[Instance] = []
    result = segment_scene(
        seg, path, {"labels": tmp_path / "a.tif", "overlay": tmp_path / "a.png"}, found=listed
    )
    assert len(listed) > 5

    held = []
    settle = StreamingDedup.settle

    def watched(self, frontier):
        settle(self, frontier)
        held.append((len(self.pending), len(self.kept)))

    monkeypatch.setattr(instances_module.StreamingDedup, "settle", watched)
    out = tmp_path / "out"
    out.mkdir()
    with ObjectSpill(out, "b") as spill:
        segment_scene(seg, path, {"labels": out / "b.tif", "overlay": out / "b.png"}, found=spill)
        assert all(kept == 0 for _, kept in held)  # nothing settled stays in memory
        assert same_instances(list(spill), listed)
        for suffix in ("geojson", "gpkg"):
            for batch in (1000, 3):  # one go, and by batches of 3 read back from the spill
                write_objects(tmp_path / f"a{batch}.{suffix}", listed, names, result.crs, result.transform)
                write_objects(
                    tmp_path / f"b{batch}.{suffix}",
                    spill,
                    names,
                    result.crs,
                    result.transform,
                    batch_size=batch,
                )
    assert sorted(p.name for p in out.iterdir()) == ["b.png", "b.qml", "b.tif", "b.tif.aux.xml"]  # spill gone
    for batch in (1000, 3):
        a, b = tmp_path / f"a{batch}.geojson", tmp_path / f"b{batch}.geojson"
        assert a.read_bytes() == b.read_bytes()
        a, b = pyogrio.raw.read(tmp_path / f"a{batch}.gpkg"), pyogrio.raw.read(tmp_path / f"b{batch}.gpkg")
        assert a[0]["fields"].tolist() == b[0]["fields"].tolist() and a[0]["crs"] == b[0]["crs"]
        assert [bytes(g) for g in a[2]] == [bytes(g) for g in b[2]]
        for column_a, column_b in zip(a[3], b[3], strict=True):
            np.testing.assert_array_equal(column_a, column_b)
