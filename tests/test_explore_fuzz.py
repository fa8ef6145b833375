"""``ovearth explore``: whatever a request holds, the answer is a status and one sentence, never a 500.

Malformed JSON, arrays for objects, huge numbers, NaN, negative sizes and the wrong type in
every field of a run; odd query parameters, path parameters and headers. After each batch a
plain run still works (the server is alive).
"""

from __future__ import annotations

import json

import pytest
from PIL import Image
from starlette.testclient import TestClient

from ovearth.explore.catalog import ImageCatalog
from ovearth.explore.request import SETTING_FIELDS
from ovearth.explore.server import create_app
from ovearth.explore.session import ExploreSession
from tests.asgi_raw import raw_request
from tests.conftest import make_image

JSON = {"content-type": "application/json"}
GOOD = {"image": "root:a.png", "classes": ["road", "tree"]}

#: values of the wrong type, out of range or absurd, tried in every field
ODD_VALUES = [
    None,
    True,
    0,
    -1,
    1.5,
    float("nan"),
    float("inf"),
    float("-inf"),
    10**30,
    -(10**30),
    "",
    "x",
    "a" * 30_000,
    [],
    [1],
    ["a"] * 300,
    {},
    {"a": 1},
]

#: settings values aimed at one field's parser
SETTING_EXTRAS = [
    {"road": float("nan")},
    {"road": "0.5"},
    {"road": None},
    {"road": 10**30},
    {"": 0.5},
    "smooth:a=1e999",
    "smooth:k=99999999999999",
    "smooth:a",
    "smooth:=1",
    "+",
    "smooth:a=1,a=2",
    "lowpass:r=nan",
    "clip:model=/etc",
    "none+none",
]

#: bodies that are not a run request at all
RAW_BODIES = [
    b"",
    b"null",
    b"[]",
    b"1",
    b'"x"',
    b"{",
    b"\xff\xfe\x00",
    b'{"image": NaN, "classes": Infinity}',
    b'{"image": "root:a.png", "classes": ["road"], "settings": {"prob_thd": 1e999}}',
    b'{"image": "root:a.png", "classes": ["road"], "settings": {"slide_crop": -5, "slide_stride": -1}}',
    b'{"image": ' + b"1" * 5000 + b"}",  # an integer of 5000 digits: Python refuses to parse it
    b"[" * 100_000 + b"]" * 100_000,  # deeper than the JSON parser's recursion
    b'{"image": "root:a.png", "classes": ["road"], "settings": {"bg_idx": ' + b"9" * 5000 + b"}}",
]


@pytest.fixture(scope="module")
def client(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-root")
    Image.fromarray(make_image(1, 48, 64)).save(root / "a.png")
    session = ExploreSession(tiny, ImageCatalog([], root))
    with TestClient(create_app(session), base_url="http://127.0.0.1", raise_server_exceptions=False) as made:
        yield made
    session.close()


@pytest.fixture(scope="module")
def result_id(client) -> str:
    return client.post("/api/run", json=GOOD).json()["id"]


def answered(response, *statuses: int) -> None:
    """A handled answer: one of ``statuses`` (any 4xx by default) with a one-sentence JSON error."""
    status = response.status_code
    if status == 200:
        return
    assert status in statuses if statuses else 400 <= status < 500, (status, response.text[:300])
    message = response.json()["error"]
    assert message and "\n" not in message and message.endswith((".", "?")), message
    assert "Traceback" not in message and "Unexpected" not in message


def alive(client) -> None:
    response = client.post("/api/run", json=GOOD)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("body", RAW_BODIES, ids=range(len(RAW_BODIES)))
def test_bodies_that_are_not_run_requests(client, body):
    response = client.post("/api/run", content=body, headers=JSON)
    assert response.status_code in (400, 413), response.text[:300]
    answered(response)
    alive(client)


@pytest.mark.parametrize("field", ["image", "classes", "enabled", "settings"])
def test_every_top_level_field_with_odd_values(client, field):
    for value in ODD_VALUES:
        response = client.post("/api/run", content=json.dumps({**GOOD, field: value}), headers=JSON)
        answered(response, 400, 404, 413)
    alive(client)


@pytest.mark.parametrize("field", sorted(SETTING_FIELDS))
def test_every_setting_with_odd_values(client, field):
    for value in [*ODD_VALUES, *SETTING_EXTRAS]:
        body = {**GOOD, "settings": {field: value}}
        response = client.post("/api/run", content=json.dumps(body), headers=JSON)
        answered(response, 400, 413)
    alive(client)


def test_odd_query_and_path_parameters(client, result_id):
    base = f"/api/results/{result_id}"
    for params in (
        {"x": "9" * 5000, "y": 0},
        {"x": "NaN", "y": "0"},
        {"x": "1e3", "y": "0"},
        {"x": "", "y": ""},
        {"x": "\x00", "y": "1"},
        {"x": -(10**30), "y": 10**30},
    ):
        answered(client.get(f"{base}/pixel", params=params), 400)
    for path in (
        f"{base}/scores/{'9' * 5000}.png",  # a route's int convertor fails on this
        f"{base}/scores/99999999999999999999.png",
        f"{base}/scores/-1.png",
        f"{base}/attention/{'9' * 5000}",
        f"{base}/attention/1e3",
        f"{base}/attention/0/{'a' * 5000}.png",
        "/api/results/%00/overlay.png",
        "/api/results/" + "x" * 5000 + "/overlay.png",
        "/api/image.png?id=%00",
        "/api/image.png?id=" + "a" * 5000,
        "/api/image.png?id=root:a.png&id=root:b.png",
        "/api/presets/%00",
        "/api/presets/" + "a" * 5000,
    ):
        answered(client.get(path), 400, 404)
    alive(client)


def test_odd_upload_names(client):
    for name in ("a\x00.png", "x" * 10_000 + ".png", ".png", "..", "%ff.png", "a.png/../../b.png"):
        response = client.post(
            "/api/upload",
            params={"name": name},
            content=b"\x89PNG",
            headers={"content-type": "application/octet-stream"},
        )
        answered(response, 400, 415)
    alive(client)


def raw_post(app, path: str, headers: list[tuple[bytes, bytes]], body: bytes) -> tuple[int, bytes]:
    """POST with headers exactly as given (an HTTP client would rewrite Content-Length)."""
    return raw_request(app, "POST", path, headers=headers, body=body)


@pytest.mark.parametrize("length", [b"\xb2", "\u0663".encode(), b"-5", b"abc", b"1e3", b" 12 "])
def test_odd_content_lengths(client, length):
    """'²' and Arabic digits are digits to str.isdigit but not to int()."""
    body = json.dumps(GOOD).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", length)]
    status, answer = raw_post(client.app, "/api/run", headers, body)
    assert status in (200, 400), answer
    assert "error" not in json.loads(answer) or json.loads(answer)["error"].endswith(".")
    alive(client)


@pytest.mark.parametrize(
    "header",
    [(b"content-type", b"\xff"), (b"origin", b"\xff\xfe"), (b"sec-fetch-site", b"\xff"), (b"host", b"\xff")],
)
def test_odd_header_bytes(client, header):
    headers = [header] if header[0] == b"content-type" else [(b"content-type", b"application/json"), header]
    status, answer = raw_post(client.app, "/api/run", headers, json.dumps(GOOD).encode())
    assert 400 <= status < 500 and json.loads(answer)["error"].endswith(".")
    alive(client)


def test_a_class_name_with_a_control_character_is_a_400(client):
    for classes in (["road\x07", "tree"], ["ro\x1bad;tree"], "road;lane\x00"):
        response = client.post("/api/run", json={**GOOD, "classes": classes})
        answered(response, 400)
        assert response.status_code == 400 and "control character U+00" in response.json()["error"]
    alive(client)
