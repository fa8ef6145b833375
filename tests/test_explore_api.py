"""``ovearth explore``'s HTTP API, in process: every endpoint, bad input, traversal, caching, sharing."""

from __future__ import annotations

import io
import json
import threading
import time
import zipfile

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image
from rasterio.transform import from_origin
from starlette.testclient import TestClient

from ovearth import Segmentor
from ovearth.data.protocols import load_protocol
from ovearth.data.raster import apply_stretch
from ovearth.data.scene import SceneReader
from ovearth.explore.catalog import ImageCatalog
from ovearth.explore.picture import load_picture
from ovearth.explore.server import SECURITY_HEADERS, STATIC, create_app
from ovearth.explore.session import ExploreSession
from ovearth.model.stages import Sam3Stages
from ovearth.run.files import FileOptions, segment_file
from ovearth.segment.fusion import labels_from_logits
from ovearth.segment.views import ViewEngine
from tests.asgi_raw import raw_request
from tests.conftest import make_image, run_cli

SECRET = b"TOPSECRET-explore"
CLASSES = ["building,roof", "road", "tree"]


def write_tif(path, data, crs="EPSG:32633", nodata=None) -> None:
    count, height, width = data.shape
    profile = dict(driver="GTiff", height=height, width=width, count=count, dtype=data.dtype, crs=crs)
    profile["transform"] = from_origin(500000, 4100000, 0.5, 0.5)
    with rasterio.open(path, "w", nodata=nodata, **profile) as out:
        out.write(data)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A root folder with images, hidden files and links out; a secret folder beside it."""
    base = tmp_path_factory.mktemp("explore")
    root, outside = base / "root", base / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    Image.fromarray(make_image(9, 40, 40)).save(outside / "secret.png")
    Image.fromarray(make_image(1, 48, 64)).save(root / "a.png")
    Image.fromarray(make_image(2, 40, 56)).save(root / "sub" / "b.jpg")
    Image.fromarray(make_image(3, 32, 32)).save(root / ".hidden.png")
    rng = np.random.default_rng(0)
    write_tif(root / "c.tif", rng.integers(100, 3000, (3, 40, 48), dtype=np.uint16))
    write_tif(root / "big.tif", rng.integers(100, 3000, (3, 30, 4200), dtype=np.uint16))
    (root / "link.png").symlink_to(outside / "secret.png")
    (root / "linkdir").symlink_to(outside, target_is_directory=True)
    (root / "notes.txt").write_text("not an image")
    listed = base / "listed.png"
    Image.fromarray(make_image(4, 36, 44)).save(listed)
    return {"root": root, "outside": outside, "listed": listed, "base": base}


@pytest.fixture
def session(tiny, tree):
    made = ExploreSession(tiny, ImageCatalog([tree["listed"]], tree["root"]))
    yield made
    made.close()


@pytest.fixture
def client(session):
    with TestClient(create_app(session, max_upload_bytes=200_000), base_url="http://127.0.0.1") as made:
        yield made


@pytest.fixture
def calls(monkeypatch):
    """Counts of the model's stages: backbone views, text rows, decoder prompts."""
    counts = {"encode_images": 0, "encode_text": 0, "decode": 0}

    def counting(name, size):
        original = getattr(Sam3Stages, name)

        def wrapper(self, *args, **kwargs):
            counts[name] += size(args)
            return original(self, *args, **kwargs)

        monkeypatch.setattr(Sam3Stages, name, wrapper)

    counting("encode_images", lambda args: len(args[0]))
    counting("encode_text", lambda args: len(args[0]))
    counting("decode", lambda args: args[0].tokens.shape[0])
    return counts


def run(client, classes=CLASSES, image="root:a.png", **extra):
    return client.post("/api/run", json={"image": image, "classes": classes, **extra})


def ok_run(client, **kwargs) -> dict:
    response = run(client, **kwargs)
    assert response.status_code == 200, response.text
    return response.json()


def one_sentence(response) -> str:
    message = response.json()["error"]
    assert "\n" not in message and message.endswith((".", "?")) and "Traceback" not in message
    return message


# ----- static page, config, images -----


def test_page_and_assets_are_local_and_guarded(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for key, value in SECURITY_HEADERS.items():
        assert page.headers[key] == value
    for name in ("index.html", "app.js", "style.css"):
        text = (STATIC / name).read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, name
        assert client.get(f"/static/{name}").status_code == 200
    assert "innerHTML" not in (STATIC / "app.js").read_text()  # user text never becomes markup
    assert "eval(" not in (STATIC / "app.js").read_text()


def test_config(client, session):
    data = client.get("/api/config").json()
    assert "loveda" in data["presets"] and data["max_upload_bytes"] == 200_000
    assert {r["name"] for r in data["refiners"]} >= {"smooth", "lowpass"}
    assert data["defaults"]["prob_thd"] == 0.0 and data["defaults"]["bg_idx"] is None
    assert data["prompt_forms"] == ["meta", "transformers"] and data["device"] == "cpu"


def test_images_are_the_listed_and_the_roots_only(client, tree):
    images = client.get("/api/images").json()["images"]
    ids = [i["id"] for i in images]
    assert ids == ["listed:0", "root:a.png", "root:big.tif", "root:c.tif", "root:sub/b.jpg"]
    assert images[0]["name"] == str(tree["listed"])


@pytest.mark.parametrize(
    ("image_id", "size"), [("root:a.png", (48, 64)), ("root:sub/b.jpg", (40, 56)), ("listed:0", (36, 44))]
)
def test_image_png_is_the_working_picture(client, image_id, size):
    response = client.get("/api/image.png", params={"id": image_id})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(response.content)).size == (size[1], size[0])


def test_large_geotiff_is_a_quicklook_with_the_scenes_stretch(tree):
    path = tree["root"] / "big.tif"
    picture = load_picture(path, max_side=2048)
    assert picture.step == 3 and picture.rgb.shape == (10, 1400, 3) and picture.full_size == (30, 4200)
    with SceneReader(path) as reader:  # segment's windowed reader: the whole scene's limits
        limits, transform = reader.limits, reader.transform
    with rasterio.open(path) as src:
        decimated = src.read(out_shape=(3, 10, 1400))
    assert np.array_equal(picture.rgb, apply_stretch(decimated, limits).transpose(1, 2, 0))
    assert picture.image.transform.a == pytest.approx(transform.a * 3)
    assert picture.image.transform.c == transform.c and picture.image.crs is not None


# ----- safety: nothing outside the root or the listed files -----


def raw_get(app, path: str, query: bytes = b"") -> tuple[int, bytes]:
    """GET with the path exactly as given (an HTTP client would remove '..' itself)."""
    return raw_request(app, "GET", path, query)


TRAVERSAL_IDS = [
    "root:../outside/secret.png",
    "root:../outside/secret.txt",
    "root:/etc/passwd",
    "/etc/passwd",
    "../../etc/passwd",
    "root:sub/../../outside/secret.png",
    "root:%2e%2e/outside/secret.png",
    "root:link.png",  # a link inside the root to a file outside
    "root:linkdir/secret.png",  # a link to a folder outside
    "root:.hidden.png",
    "root:notes.txt",
    "listed:7",
    "listed:-1",
    "upload:../../etc/passwd",
    "",
]


@pytest.mark.parametrize("image_id", TRAVERSAL_IDS)
def test_traversal_by_image_id_is_refused(client, tree, image_id):
    secret_png = (tree["outside"] / "secret.png").read_bytes()
    for response in (
        client.get("/api/image.png", params={"id": image_id}),
        run(client, image=image_id),
    ):
        assert 400 <= response.status_code < 500, (image_id, response.status_code)
        assert SECRET not in response.content and secret_png[:64] not in response.content
        assert b"root:x:0" not in response.content
        one_sentence(response)


@pytest.mark.parametrize(
    "path",
    [
        "/static/../../../etc/passwd",
        "/static/../server.py",
        "/static/%2e%2e/server.py",
        "/static/..%2fserver.py",
        "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/static//etc/passwd",
        "/api/presets/..%2f..%2f..%2fetc%2fpasswd",
        "/api/presets/../../etc/passwd",
        "/api/results/..%2f..%2f/overlay.png",
        "/../../etc/passwd",
    ],
)
def test_traversal_by_path_is_refused(client, path):
    for status, body in (raw_get(client.app, path), (lambda r: (r.status_code, r.content))(client.get(path))):
        assert 400 <= status < 500, (path, status)
        assert b"root:x:0" not in body and b"def create_app" not in body


def test_presets_are_names_not_paths(client, tree):
    (tree["base"] / "mine.yaml").write_text("name: mine\nclasses: [secret]\n")
    assert client.get(f"/api/presets/{tree['base'] / 'mine.yaml'}").status_code == 404
    assert client.get("/api/presets/mine.yaml").status_code == 404
    response = client.get("/api/presets/loveda")
    assert response.status_code == 200
    data = response.json()
    assert data["classes"][1] == "building,house" and data["settings"]["bg_idx"] == 0


def test_a_link_swapped_in_after_the_listing_is_refused(client, tree):
    path = tree["root"] / "later.png"
    Image.fromarray(make_image(5, 32, 32)).save(path)
    try:
        assert "root:later.png" in [i["id"] for i in client.get("/api/images").json()["images"]]
        path.unlink()
        path.symlink_to(tree["outside"] / "secret.png")
        response = client.get("/api/image.png", params={"id": "root:later.png"})
        assert response.status_code == 404
    finally:
        path.unlink()


def test_other_host_names_are_refused(client):
    """No DNS rebinding: a page on another site cannot talk to the server through its own name."""
    response = client.get("/api/images", headers={"host": "attacker.example"})
    assert response.status_code == 400 and b"root:" not in response.content


# ----- uploads -----


def png_bytes(seed: int, height: int = 40, width: int = 48) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(make_image(seed, height, width)).save(buffer, format="PNG")
    return buffer.getvalue()


#: what the page's script sends with an upload
RAW = {"content-type": "application/octet-stream"}


def test_upload_is_listed_and_segmented(client, session):
    data = png_bytes(7)
    response = client.post("/api/upload", params={"name": "../../etc/field.png"}, content=data, headers=RAW)
    assert response.status_code == 200, response.text
    entry = response.json()
    assert entry["id"].startswith("upload:") and entry["name"] == "field.png"
    path = session.catalog.path(entry["id"])
    assert path.read_bytes() == data and "etc" not in path.parts
    assert entry["id"] in [i["id"] for i in client.get("/api/images").json()["images"]]
    result = ok_run(client, image=entry["id"])
    assert result["image"]["width"] == 48
    again = client.post("/api/upload", params={"name": "other.png"}, content=data, headers=RAW)
    assert again.json()["id"] == entry["id"]  # same bytes, same entry


def test_upload_over_the_cap_is_413(client):
    big = b"\x89PNG" + bytes(250_000)
    response = client.post("/api/upload", params={"name": "big.png"}, content=big, headers=RAW)
    assert response.status_code == 413 and "limit" in one_sentence(response)

    def chunks():  # no Content-Length: the stream is cut at the cap
        for _ in range(30):
            yield bytes(10_000)

    response = client.post("/api/upload", params={"name": "big.png"}, content=chunks(), headers=RAW)
    assert response.status_code == 413


@pytest.mark.parametrize(
    ("name", "content", "status"),
    [
        ("notes.txt", b"hello", 415),
        ("noext", b"hello", 415),
        ("broken.png", b"not a png", 400),
        ("e.png", b"", 400),
    ],
)
def test_bad_uploads(client, name, content, status):
    response = client.post("/api/upload", params={"name": name}, content=content, headers=RAW)
    assert response.status_code == status
    one_sentence(response)


# ----- runs: results equal Segmentor.predict; caches skip what did not change -----


def test_run_equals_predict(client, session, tiny):
    settings = {"prob_thd": 0.3, "class_prob_thd": {"road": 0.45}}
    data = ok_run(client, settings=settings)
    result = session.result(data["id"])
    rgb = np.asarray(Image.open(session.catalog.path("root:a.png")).convert("RGB"))
    expected = Segmentor(tiny, ";".join(CLASSES), prob_thd=0.3, class_prob_thd={"road": 0.45}).predict(rgb)
    assert np.array_equal(result.labels, expected.labels)
    torch.testing.assert_close(result.class_logits, expected.class_logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(result.presence, expected.presence, rtol=0, atol=1e-6)
    assert [c["name"] for c in data["classes"]] == ["building", "road", "tree"]
    assert [n["name"] for n in data["names"]] == ["building", "roof", "road", "tree"]
    assert data["computed"] == ["building", "roof", "road", "tree"] and data["reused"] == 0
    shares = [c["share"] for c in data["classes"]] + [data["unclassified_share"]]
    assert sum(shares) == pytest.approx(1.0)
    assert data["classes"][1]["threshold"] == 0.45 and data["classes"][0]["threshold"] == 0.3


def test_threshold_change_runs_no_model(client, session, calls):
    first = ok_run(client, settings={"prob_thd": 0.0})
    assert calls["encode_images"] == 1 and calls["decode"] == 4
    before = dict(calls)
    changes = {"prob_thd": 0.5, "class_prob_thd": {"tree": 0.2}, "bg_idx": 1}
    second = ok_run(client, settings=changes)
    assert calls == before and second["computed"] == [] and second["model_runs"] == first["model_runs"]
    result = session.result(second["id"])
    expected = labels_from_logits(result.class_logits.clone(), [0.5, 0.5, 0.2], 1)
    assert np.array_equal(result.labels, expected.numpy().astype(np.uint8))
    assert not np.array_equal(result.labels, session.result(first["id"]).labels)


def test_class_change_reuses_backbone_and_names(client, calls):
    ok_run(client)
    before = dict(calls)
    data = ok_run(client, classes=[*CLASSES, "water,lake"])
    assert data["computed"] == ["water", "lake"] and data["reused"] == 4
    assert calls["encode_images"] == before["encode_images"]  # backbone features held
    assert calls["encode_text"] - before["encode_text"] == 2  # only the new names' text
    assert calls["decode"] - before["decode"] == 2


def test_toggling_a_class_runs_no_model_and_keeps_colours(client, calls):
    full = ok_run(client)
    before = dict(calls)
    data = ok_run(client, enabled=[True, False, True])
    assert calls == before and data["computed"] == []
    assert [c["name"] for c in data["classes"]] == ["building", "tree"]
    assert [c["page_index"] for c in data["classes"]] == [0, 2]
    assert data["classes"][1]["color"] == full["classes"][2]["color"]
    assert [n["name"] for n in data["names"]] == ["building", "roof", "tree"]


def test_refiner_change_reruns_the_names_but_not_the_backbone(client, calls):
    ok_run(client)
    views = calls["encode_images"]
    data = ok_run(client, settings={"refine": "smooth:a=0.3", "use_instances": False})
    assert data["computed"] == ["building", "roof", "road", "tree"]
    assert calls["encode_images"] == views  # the held backbone features do not depend on the refiner
    again = ok_run(client, settings={"refine": "smooth:a=0.3", "use_instances": False, "prob_thd": 0.4})
    assert again["computed"] == []
    ok_run(client, settings={"prompt_form": "transformers"})  # the backbone's output changes
    assert calls["encode_images"] == views + 1


@pytest.mark.parametrize(
    "settings",
    [
        {"slide_crop": 32, "slide_stride": 24, "prob_thd": 0.2},
        {"refine": "smooth:a=0.3", "refine_for": "mask"},
        {"refine": "smooth:a=0.3", "refine_at": "backbone", "use_semantic": False},
        {"prompt_form": "transformers", "confidence_threshold": 0.3},
    ],
)
def test_cached_runs_equal_predict(client, session, tiny, settings):
    """Whatever ran before on the same picture (held features, other names), results are predict's."""
    ok_run(client, classes=["road", "water"])  # fills the held features and two names
    ok_run(client, classes=["road", "water"], settings={"refine": "smooth:a=0.1"})
    data = ok_run(client, settings=settings)
    result = session.result(data["id"])
    rgb = np.asarray(Image.open(session.catalog.path("root:a.png")).convert("RGB"))
    expected = Segmentor(tiny, ";".join(CLASSES), **settings).predict(rgb)
    assert np.array_equal(result.labels, expected.labels)
    torch.testing.assert_close(result.class_logits, expected.class_logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(result.presence, expected.presence, rtol=0, atol=1e-6)


BAD_RUNS = [
    ({"classes": ""}, "empty"),
    ({"classes": "a;;b"}, "empty class"),
    ({"classes": 5}, "classes"),
    ({"classes": ["road", "Road"]}, "twice"),
    ({"enabled": [True]}, "enabled"),
    ({"enabled": [False, False, False]}, "switch at least one"),
    ({"settings": {"nope": 1}}, "Unknown setting 'nope'"),
    ({"settings": {"prob_thd": 2}}, "prob_thd"),
    ({"settings": {"prob_thd": "0.3"}}, "wrong type"),
    ({"settings": {"use_presence": "yes"}}, "wrong type"),
    ({"settings": {"refine": "nosuch:a=1"}}, "nosuch"),
    ({"settings": {"class_prob_thd": {"nope": 0.3}}}, "not a class"),
    ({"settings": {"bg_idx": 9}}, "bg_idx"),
    ({"settings": {"prompt_form": "other"}}, "prompt_form"),
    ({"settings": []}, "settings"),
    ({"extra": 1}, "Unknown field 'extra'"),
]


@pytest.mark.parametrize(("change", "words"), BAD_RUNS)
def test_bad_run_is_one_sentence_400(client, change, words):
    body = {"image": "root:a.png", "classes": CLASSES, **change}
    response = client.post("/api/run", json=body)
    assert response.status_code == 400, response.text
    assert words.lower() in one_sentence(response).lower()


def test_bad_json_and_missing_image(client):
    response = client.post("/api/run", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400 and "JSON" in one_sentence(response)
    assert client.post("/api/run", json={"classes": CLASSES}).status_code == 400
    assert client.post("/api/run", json=["a"]).status_code == 400
    big = b"x" * (2**20 + 10)
    assert (
        client.post("/api/run", content=big, headers={"content-type": "application/json"}).status_code == 413
    )
    assert client.get("/api/run").status_code == 405


def test_an_error_is_shown_and_the_server_goes_on(client, monkeypatch):
    original = ViewEngine.run

    def broken(self, *args, **kwargs):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(ViewEngine, "run", broken)
    response = run(client)
    assert response.status_code == 500 and one_sentence(response) == "Unexpected RuntimeError: boom."
    monkeypatch.setattr(ViewEngine, "run", original)
    assert run(client).status_code == 200


def test_a_second_request_waits_for_the_model(client, monkeypatch):
    original = ViewEngine.run
    active, most = [0], [0]
    lock = threading.Lock()

    def slow(self, *args, **kwargs):
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        time.sleep(0.3)
        try:
            return original(self, *args, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(ViewEngine, "run", slow)
    answers: list = [None, None]

    def request(i: int, classes: list[str]) -> None:
        answers[i] = run(client, classes=classes)

    threads = [
        threading.Thread(target=request, args=(0, ["building", "road"])),
        threading.Thread(target=request, args=(1, ["tree", "water"])),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert [a.status_code for a in answers] == [200, 200]
    assert most[0] == 1  # queued, never two at once
    assert sorted(len(a.json()["computed"]) for a in answers) == [2, 2]


# ----- result pictures, readout, attention -----


def test_result_pictures(client):
    data = ok_run(client)
    overlay = client.get(data["overlay"])
    assert overlay.status_code == 200 and Image.open(io.BytesIO(overlay.content)).size == (64, 48)
    for c in data["classes"]:
        picture = Image.open(io.BytesIO(client.get(c["scores"]).content))
        assert picture.size == (64, 48) and picture.mode == "RGB"
    assert client.get(f"/api/results/{data['id']}/scores/3.png").status_code == 404
    assert client.get(f"/api/results/{data['id']}/scores/x.png").status_code == 404
    assert client.get("/api/results/nope/overlay.png").status_code == 404


def test_pixel_readout_is_the_class_scores(client, session):
    data = ok_run(client, settings={"prob_thd": 0.2})
    result = session.result(data["id"])
    for x, y in [(0, 0), (63, 47), (10, 30)]:
        pixel = client.get(f"/api/results/{data['id']}/pixel", params={"x": x, "y": y}).json()
        scores = [s["score"] for s in pixel["scores"]]
        assert scores == pytest.approx(result.class_logits[:, y, x].tolist())
        label = int(result.labels[y, x])
        assert pixel["label"] == ("unclassified" if label == 254 else ["building", "road", "tree"][label])
    for params in ({"x": 64, "y": 0}, {"x": -1, "y": 0}, {"x": "a", "y": 0}, {"x": 1}):
        response = client.get(f"/api/results/{data['id']}/pixel", params=params)
        assert response.status_code == 400
        one_sentence(response)


def test_attention_of_a_class(client, session, calls):
    data = ok_run(client)
    runs = session.model_runs
    info = client.get(f"/api/results/{data['id']}/attention/1")
    assert info.status_code == 200
    summary = info.json()
    assert summary["prompt"] == "road" and summary["grid"] == [24, 24] and 0 <= summary["presence"] <= 1
    assert session.model_runs == runs + 1
    for kind, url in summary["maps"].items():
        picture = client.get(url)
        assert picture.status_code == 200, kind
        assert Image.open(io.BytesIO(picture.content)).size == (64, 48)
    assert session.model_runs == runs + 1  # cached
    maps = session.attention(session.result(data["id"]), 1)
    for weights in maps.weights.values():
        assert weights.shape == (24 * 24,) and float(weights.sum()) == pytest.approx(1.0, abs=1e-4)
    assert client.get(f"/api/results/{data['id']}/attention/5").status_code == 404
    assert client.get(f"/api/results/{data['id']}/attention/0/nope.png").status_code == 404


# ----- exports -----


def test_preset_yaml_round_trips(client, tmp_path):
    settings = {"prob_thd": 0.25, "class_prob_thd": {"tree": 0.4}, "refine": "smooth:a=0.2", "bg_idx": 0}
    data = ok_run(client, settings=settings, enabled=[True, False, True])
    response = client.get(data["preset"])
    assert response.status_code == 200 and "a_preset.yaml" in response.headers["content-disposition"]
    path = tmp_path / "a_preset.yaml"
    path.write_bytes(response.content)
    protocol = load_protocol(path)
    assert str(protocol.vocabulary) == "building,roof;tree"
    s = protocol.settings
    assert (s.prob_thd, dict(s.class_prob_thd), s.bg_idx) == (0.25, {"tree": 0.4}, 0)
    assert s.refine.startswith("smooth:a=0.2")


def test_export_zip_has_segments_files(client, session, tiny, tmp_path):
    data = ok_run(client, image="root:c.tif", settings={"prob_thd": 0.3})
    response = client.get(data["export"])
    assert response.status_code == 200 and response.headers["content-type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    names = set(archive.namelist())
    segment_dir = tmp_path / "segment"
    segment_file(
        Segmentor(tiny, ";".join(CLASSES), prob_thd=0.3),
        session.catalog.path("root:c.tif"),
        segment_dir,
        FileOptions(scores=True),
    )
    written = {p.name for p in segment_dir.iterdir()}
    assert written <= names and names - written == {"c_preset.yaml", "c_explore.json"}
    archive.extractall(tmp_path / "zip")
    with (
        rasterio.open(tmp_path / "zip" / "c_labels.tif") as mine,
        rasterio.open(segment_dir / "c_labels.tif") as ref,
    ):
        assert (
            np.array_equal(mine.read(1), ref.read(1))
            and mine.crs == ref.crs
            and mine.transform == ref.transform
        )
    with (
        rasterio.open(tmp_path / "zip" / "c_scores.tif") as mine,
        rasterio.open(segment_dir / "c_scores.tif") as ref,
    ):
        np.testing.assert_allclose(mine.read(), ref.read(), atol=1e-6)
    record = json.loads(archive.read("c_explore.json"))
    assert record["settings"]["prob_thd"] == 0.3 and record["image"]["quicklook_step"] == 1


# ----- the command line -----


def test_cli_refuses_bad_inputs_before_loading(monkeypatch, capsys, tmp_path, tiny_dir):
    code, err = run_cli(monkeypatch, capsys, "explore", tmp_path / "missing.png", "--model", tiny_dir)
    assert code == 1 and "missing.png: no such file." in err
    code, err = run_cli(monkeypatch, capsys, "explore", "--root", tmp_path / "nope", "--model", tiny_dir)
    assert code == 1 and "--root must be a folder" in err
    code, err = run_cli(monkeypatch, capsys, "explore", "--port", "70000", "--model", tiny_dir)
    assert code == 1 and "not a port number" in err
