"""``ovearth explore``: refiner parameters that name a file or model are not the page's to choose."""

from __future__ import annotations

import dataclasses
import typing

import pytest
from PIL import Image
from starlette.testclient import TestClient

from ovearth.errors import InputError
from ovearth.explore.catalog import ImageCatalog
from ovearth.explore.request import RESOURCE_PARAMS, parse_run
from ovearth.explore.server import create_app
from ovearth.explore.session import ExploreSession
from ovearth.model import clip as clip_model
from ovearth.refine import clip as clip_refiner
from ovearth.refine.registry import list_refiners, parse_refine, refiner_class
from ovearth.segment.settings import SegmentSettings
from tests.conftest import make_image


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    folder = tmp_path_factory.mktemp("refiner-root")
    Image.fromarray(make_image(1, 48, 64)).save(folder / "a.png")
    model = folder / "clip-model"  # a folder that exists, with a config like a model's
    model.mkdir()
    (model / "config.json").write_text("{}")
    return folder


@pytest.fixture
def loads(monkeypatch):
    """Every attempt to load a CLIP model (none may happen for a refused value)."""
    seen: list[str] = []

    def load(model_id, device=None):
        seen.append(model_id)
        raise AssertionError("CLIP was loaded")

    monkeypatch.setattr(clip_model, "load_clip", load)
    monkeypatch.setattr(clip_refiner, "load_clip", load)
    return seen


@pytest.fixture
def client(tiny, root):
    session = ExploreSession(tiny, ImageCatalog([], root), allowed_models=("my/clip",))
    with TestClient(create_app(session), base_url="http://127.0.0.1") as made:
        yield made
    session.close()


def run(client, refine: str):
    settings = {"refine": refine, "refine_at": "fusion"}
    return client.post("/api/run", json={"image": "root:a.png", "classes": ["road"], "settings": settings})


def test_a_path_or_hub_id_from_the_page_is_refused_without_saying_whether_it_exists(client, root, loads):
    values = [
        str(root / "clip-model"),  # exists, looks like a model
        str(root / "missing-model"),  # does not exist
        "/etc",  # exists, not a model
        "someone/some-clip",  # a hub id: would start a download
        "../../../../../etc/passwd",
    ]
    messages = set()
    for value in values:
        response = run(client, f"clip:mode=text,g=0.5,model={value}")
        assert response.status_code == 400, (value, response.text)
        message = response.json()["error"]
        assert "\n" not in message and message.endswith(".") and value not in message
        messages.add(message)
    assert len(messages) == 1  # the same sentence whatever the value: nothing learnt about the path
    assert "--allow-model" in messages.pop()
    assert loads == []  # nothing opened or loaded
    assert run(client, "smooth:a=0.2").status_code == 200  # the server goes on


def test_the_default_and_the_allowed_values_pass():
    base = SegmentSettings()
    body = {"image": "root:a.png", "classes": ["road"]}
    for refine in ("clip", "clip:model=openai/clip-vit-base-patch16", "smooth:a=0.1+clip:w=0.2"):
        parse_run({**body, "settings": {"refine": refine}}, base)
    parse_run(
        {**body, "settings": {"refine": "clip:model=/models/clip"}}, base, allowed_models=["/models/clip"]
    )
    with pytest.raises(InputError, match="allow-model"):
        parse_run(
            {**body, "settings": {"refine": "clip:model=/models/clip2"}},
            base,
            allowed_models=["/models/clip"],
        )


def test_custom_refiner_specs_are_refused(client):
    response = run(client, "custom.Mine")
    assert response.status_code == 400 and "Python object" in response.json()["error"]


def test_every_text_parameter_of_a_refiner_is_a_resource_or_a_closed_choice():
    """A refiner added later with a free-text parameter must be classified here (contract)."""
    for name in list_refiners():
        cls = refiner_class(name)
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            if hints.get(field.name) is not str or field.name in RESOURCE_PARAMS:
                continue
            with pytest.raises(InputError):  # a path is not one of its choices
                parse_refine(f"{name}:{field.name}=/etc/passwd")
    assert "model" in RESOURCE_PARAMS and "model" in {
        f.name for f in dataclasses.fields(refiner_class("clip"))
    }
