"""``ovearth explore``'s run budget and caches: estimates from the request, refusals before the model,
the model lock held only while the model runs, caches bounded by bytes (in process; the
hard-limit and measured-peak proofs are in ``test_explore_memory.py``)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from PIL import Image
from starlette.testclient import TestClient

from ovearth.explore import budget as budget_module
from ovearth.explore import render
from ovearth.explore import session as session_module
from ovearth.explore.budget import (
    MemoryBudget,
    ModelDims,
    OverBudget,
    RunPlan,
    count_views,
    gigabytes,
    run_bytes,
)
from ovearth.explore.catalog import ImageCatalog, NotFound
from ovearth.explore.request import parse_run
from ovearth.explore.results import held_bytes
from ovearth.explore.server import create_app
from ovearth.explore.session import ExploreSession
from ovearth.model.preprocess import preprocess
from ovearth.model.stages import Sam3Stages
from ovearth.segment.windows import views_for
from tests.conftest import make_image


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    folder = tmp_path_factory.mktemp("budget-root")
    Image.fromarray(make_image(1, 48, 64)).save(folder / "a.png")
    Image.fromarray(make_image(2, 40, 56)).save(folder / "b.png")
    Image.fromarray(make_image(3, 1024, 1024)).save(folder / "big.png")
    return folder


def make_session(tiny, root, **kwargs) -> ExploreSession:
    return ExploreSession(tiny, ImageCatalog([], root), **kwargs)


@pytest.fixture
def calls(monkeypatch):
    """Backbone views and decoder prompts run (any call counts: the model was touched)."""
    counts = {"encode_images": 0, "decode": 0, "encode_text": 0}
    for name in counts:
        original = getattr(Sam3Stages, name)

        def wrapper(self, *args, _name=name, _original=original, **kwargs):
            counts[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(Sam3Stages, name, wrapper)
    return counts


def one_sentence(response) -> str:
    message = response.json()["error"]
    assert "\n" not in message and message.endswith(".") and "Traceback" not in message
    return message


# ----- the estimate's parts -----


def test_view_bytes_are_the_backbone_features(tiny):
    """F (the formula) equals the bytes encode_images returns for one view of the tiny model."""
    dims = ModelDims.of(tiny.model.config)
    stages = Sam3Stages(tiny.model)
    view = torch.from_numpy(make_image(4, 50, 70)).permute(2, 0, 1)
    with torch.inference_mode():
        vision = stages.encode_images(preprocess(view, stages.image_size, stages.dtype)[None])
    tensors = [*vision.levels, *vision.pos, vision.prompt_token]
    assert dims.view_bytes == sum(t.numel() * t.element_size() for t in tensors)
    assert dims.grid == 24 and dims.level_tokens == 21 * 24 * 24


@pytest.mark.parametrize(
    ("height", "width", "crop", "stride"),
    [(48, 64, 0, 0), (48, 64, 32, 16), (48, 64, 2, 1), (48, 64, 64, 64), (48, 64, 50, 7), (10, 1000, 9, 9)],
)
def test_count_views_is_views_for(height, width, crop, stride):
    windows = views_for(height, width, crop, stride)
    count, pixels = count_views(height, width, crop, stride)
    assert count == len(windows)
    assert pixels == max((w.y2 - w.y1) * (w.x2 - w.x1) for w in windows)


def test_estimate_grows_with_what_the_run_holds(tiny):
    dims = ModelDims.of(tiny.model.config)
    base = RunPlan(height=512, width=512, view_pixels=512 * 512, views=1, names=2, computed=2, classes=2)
    more_views = RunPlan(**{**base.__dict__, "views": 100})
    more_names = RunPlan(**{**base.__dict__, "names": 50, "computed": 50, "classes": 50})
    cached = RunPlan(**{**base.__dict__, "views": 0, "computed": 0})
    assert run_bytes(dims, more_views) - run_bytes(dims, base) >= 99 * dims.view_bytes
    assert run_bytes(dims, more_names) - run_bytes(dims, base) >= 48 * 4 * 512 * 512 * 2
    assert run_bytes(dims, cached) < run_bytes(dims, base)
    assert gigabytes(1) == "0.1" and gigabytes(9_360_000_000) == "9.4"


def test_the_plan_counts_views_names_and_the_cache(tiny, root):
    session = make_session(tiny, root)
    request = parse_run({"image": "root:a.png", "classes": ["road", "tree,wood"]}, session.base)
    plan = session.plan(request)  # picture not read yet: everything will be computed
    assert (plan.height, plan.width, plan.views, plan.names, plan.computed, plan.classes) == (
        48,
        64,
        1,
        3,
        3,
        2,
    )
    assert plan.picture_bytes == budget_module.PICTURE_FILE_BYTES * 48 * 64
    session.run(request)
    again = session.plan(request)
    assert (again.views, again.computed, again.picture_bytes) == (0, 0, 0)  # all cached
    windows = parse_run(
        {
            "image": "root:a.png",
            "classes": ["road", "water"],
            "settings": {"slide_crop": 32, "slide_stride": 16},
        },
        session.base,
    )
    plan = session.plan(windows)
    assert (plan.views, plan.computed, plan.view_pixels) == (len(views_for(48, 64, 32, 16)), 2, 32 * 32)
    session.run(windows)
    other = parse_run(
        {"image": "root:a.png", "classes": ["grass"], "settings": {"slide_crop": 32, "slide_stride": 16}},
        session.base,
    )
    assert session.plan(other).views == 0  # the windows' features are held


# ----- refusals: before any work, one sentence, the option named, the server goes on -----


TINY_WINDOWS = {
    "image": "root:a.png",
    "classes": ["road", "tree"],
    "settings": {"slide_crop": 2, "slide_stride": 1},
}
MANY_NAMES = {"image": "root:big.png", "classes": [f"class{i}" for i in range(250)]}


@pytest.mark.parametrize("body", [TINY_WINDOWS, MANY_NAMES], ids=["tiny-windows", "many-names"])
def test_an_oversized_run_is_refused_before_the_model(tiny, root, calls, monkeypatch, body):
    session = make_session(tiny, root, run_memory=2 * 10**9)
    decoded = []
    monkeypatch.setattr(
        session_module, "load_picture", lambda *a, **k: decoded.append(a) or pytest.fail("picture decoded")
    )
    with TestClient(create_app(session), base_url="http://127.0.0.1") as client:
        response = client.post("/api/run", json=body)
        assert response.status_code == 413, response.text
        message = one_sentence(response)
        assert "--run-memory-gb" in message and "limit of 2 GB per run" in message
        assert calls == {"encode_images": 0, "decode": 0, "encode_text": 0} and session.model_runs == 0
        assert decoded == [] and session.budget.held == 0
        monkeypatch.undo()  # decoding allowed again: a following run works
        response = client.post("/api/run", json={"image": "root:b.png", "classes": ["road"]})
        assert response.status_code == 200, response.text


def test_the_suggested_limit_is_enough(tiny, root):
    session = make_session(tiny, root, run_memory=10**9)
    request = parse_run(TINY_WINDOWS, session.base)
    with pytest.raises(OverBudget) as refused:
        session.run(request)
    suggested = float(str(refused.value).rsplit(" ", 1)[-1].rstrip("."))
    assert suggested * 1e9 >= run_bytes(session.dims, session.plan(request))


def test_the_attention_is_refused_over_the_budget(tiny, root, calls):
    session = make_session(tiny, root)
    result = session.run(parse_run({"image": "root:a.png", "classes": ["road"]}, session.base))
    session.budget = MemoryBudget(50 * 2**20)  # below one view's estimate
    before = dict(calls)
    with TestClient(create_app(session), base_url="http://127.0.0.1") as client:
        response = client.get(f"/api/results/{result.id}/attention/0")
    assert response.status_code == 413 and "--run-memory-gb" in one_sentence(response)
    assert calls == before


def test_the_prompt_batch_shrinks_to_fit_before_a_refusal(tiny, root, monkeypatch):
    """On an accelerator the batch of 16 prompts may not fit; fewer at a time give the same result."""
    session = make_session(tiny, root)
    monkeypatch.setattr(ExploreSession, "device", property(lambda self: torch.device("cuda")))
    request = parse_run({"image": "root:big.png", "classes": [f"c{i}" for i in range(16)]}, session.base)
    full = session.plan(request)
    assert full.prompt_batch == 16 and full.batched_instances
    needed = run_bytes(session.dims, full)
    session.budget = MemoryBudget(needed - 1)
    shrunk = session.plan(request)
    assert shrunk.prompt_batch < 16 and run_bytes(session.dims, shrunk) <= needed - 1


def test_runs_wait_for_each_others_reservations():
    budget = MemoryBudget(100)
    entered, release, second_in = threading.Event(), threading.Event(), threading.Event()
    most = [0]

    def first() -> None:
        with budget.reserve(70, "first"):
            entered.set()
            release.wait(30)

    def second() -> None:
        entered.wait(30)
        with budget.reserve(70, "second"):
            most[0] = max(most[0], budget.held)
            second_in.set()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    entered.wait(30)
    assert not second_in.wait(0.2) and budget.held == 70  # waiting, not refused
    release.set()
    for thread in threads:
        thread.join(30)
    assert second_in.is_set() and most[0] == 70 and budget.held == 0
    with pytest.raises(OverBudget):
        with budget.reserve(101, "This run"):
            pass


# ----- the model lock covers the model only -----


def test_the_model_lock_is_held_only_while_the_model_runs(tiny, root, monkeypatch):
    session = make_session(tiny, root)
    seen: dict[str, list[bool]] = {}

    def watch(owner, name):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            seen.setdefault(name, []).append(session.model_lock.locked())
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapper)

    watch(Sam3Stages, "encode_images")
    watch(Sam3Stages, "decode")
    for name in ("load_picture", "finish", "image_digest", "to_chw_uint8"):
        watch(session_module, name)
    watch(render, "png")
    with TestClient(create_app(session), base_url="http://127.0.0.1") as client:
        data = client.post("/api/run", json={"image": "root:a.png", "classes": ["road", "tree"]}).json()
        assert client.get(data["overlay"]).status_code == 200
        assert client.get(data["classes"][0]["scores"]).status_code == 200
    assert seen["encode_images"] and all(seen["encode_images"]) and all(seen["decode"])
    for name in ("load_picture", "finish", "image_digest", "to_chw_uint8", "png"):
        assert seen[name] and not any(seen[name]), name


# ----- caches are bounded by bytes -----


def test_caches_stay_within_their_byte_budgets(tiny, root):
    cache = 40 * 2**20  # held features 20 MiB (6 tiny views fit, 12 do not), names 15, results 5
    session = make_session(tiny, root, cache_memory=cache)
    held_share = cache * session_module.HELD_SHARE

    def run(image: str, classes: list[str], crop: int = 0) -> None:
        settings = {"slide_crop": crop, "slide_stride": crop // 2}
        session.run(parse_run({"image": image, "classes": classes, "settings": settings}, session.base))
        assert session._held.total <= held_share
        assert session._names.total <= cache * session_module.NAMES_SHARE
        assert session._results.total <= cache * session_module.RESULTS_SHARE

    run("root:a.png", ["road"], 40)  # 6 views
    [held] = [session._held.get(key) for key in list(session._held._items)]
    assert len(held.views) == 6 and session._held.total == held_bytes(held) <= held_share
    run("root:a.png", ["road"], 32)  # 6 more views of the same picture: over the share, dropped
    assert all(held_bytes(session._held.get(key)) <= held_share for key in list(session._held._items))
    assert held_bytes(held) > held_share and all(
        session._held.get(k) is not held for k in list(session._held._items)
    )
    for name in ("road", "tree", "water", "grass"):  # 4 MiB of scores and 1 MiB of labels each
        run("root:big.png", [name])
    assert len(session._results) == 0 or session._results.total <= cache * session_module.RESULTS_SHARE
    assert len(session._names) <= 3  # 4 MiB maps in 15 MiB


def test_a_cached_name_map_owns_its_memory(tiny, root):
    """Each name's map is its own tensor: dropping one from the cache frees its bytes."""
    session = make_session(tiny, root)
    request = parse_run({"image": "root:a.png", "classes": ["road", "tree", "water"]}, session.base)
    session.run(request)
    maps = [item[0] for item in (session._names.get(key) for key in list(session._names._items))]
    assert len(maps) == 3
    for item in maps:
        assert item.untyped_storage().nbytes() == item.numel() * item.element_size() == 48 * 64 * 4
    assert len({item.untyped_storage().data_ptr() for item in maps}) == 3
    assert np.isfinite(maps[0].numpy()).all()


def test_the_latest_result_is_kept_whatever_its_size(tiny, root):
    """A result over the results' share is not cached, yet the page can still read it (only it)."""
    session = make_session(tiny, root, cache_memory=2**20)  # results' share: 128 KiB
    first = session.run(parse_run({"image": "root:big.png", "classes": ["road"]}, session.base))
    assert len(session._results) == 0 and session.result(first.id) is first  # 5 MiB: not cached, still read
    second = session.run(parse_run({"image": "root:big.png", "classes": ["tree"]}, session.base))
    assert session.result(second.id) is second
    with pytest.raises(NotFound):
        session.result(first.id)
