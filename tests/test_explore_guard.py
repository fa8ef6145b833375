"""``ovearth explore`` answers only its own page: Host, Origin, Sec-Fetch-Site and body types,
through the ASGI app, and the command line's ``--host`` warning and host rule."""

from __future__ import annotations

import io
import json
import socket

import pytest
from PIL import Image
from starlette.testclient import TestClient

from ovearth.explore.catalog import ImageCatalog
from ovearth.explore.guard import HostRule, is_loopback, same_origin
from ovearth.explore.server import STATIC, create_app
from ovearth.explore.session import ExploreSession
from tests.conftest import make_image, run_cli

OWN = "http://127.0.0.1"
BODY = {"image": "root:a.png", "classes": ["road", "tree"]}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    folder = tmp_path_factory.mktemp("guard-root")
    Image.fromarray(make_image(1, 48, 64)).save(folder / "a.png")
    return folder


@pytest.fixture
def session(tiny, root):
    made = ExploreSession(tiny, ImageCatalog([], root))
    yield made
    made.close()


@pytest.fixture
def client(session):
    with TestClient(create_app(session), base_url=OWN) as made:
        yield made


def png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(make_image(7, 40, 48)).save(buffer, format="PNG")
    return buffer.getvalue()


def run_json(client, headers: dict | None = None):
    return client.post(
        "/api/run", content=json.dumps(BODY), headers={"content-type": "application/json", **(headers or {})}
    )


def one_sentence(response) -> str:
    message = response.json()["error"]
    assert "\n" not in message and message.endswith(".")
    return message


# ----- cross-origin and cross-site requests -----


def test_a_foreign_pages_simple_post_is_refused(client, session):
    """The hostile tester's request: text/plain JSON from another origin (no CORS preflight)."""
    headers = {
        "content-type": "text/plain",
        "origin": "https://attacker.example",
        "sec-fetch-site": "cross-site",
    }
    response = client.post("/api/run", content=json.dumps(BODY), headers=headers)
    assert response.status_code == 403 and "other" in one_sentence(response)
    upload = client.post("/api/upload", params={"name": "x.png"}, content=png(), headers=headers)
    assert upload.status_code == 403
    assert session.model_runs == 0 and client.get("/api/images").json()["images"] == [
        {"id": "root:a.png", "name": "a.png", "source": "root"}
    ]
    assert run_json(client).status_code == 200  # the server goes on


@pytest.mark.parametrize(
    "headers",
    [
        {"origin": "https://attacker.example"},
        {"origin": "http://attacker.example"},
        {"origin": "null"},
        {"origin": "http://127.0.0.1:9999"},  # another port of this machine: another origin
        {"origin": "http://localhost"},  # another name: another origin
        {"origin": "https://127.0.0.1"},
        {"origin": "http://127.0.0.1/evil"},
        {"sec-fetch-site": "cross-site"},
        {"sec-fetch-site": "same-site"},  # e.g. http://localhost:3000
        {"origin": OWN, "sec-fetch-site": "cross-site"},
    ],
)
def test_cross_origin_and_cross_site_requests_are_refused(client, session, headers):
    response = run_json(client, headers)
    assert response.status_code == 403, response.text
    one_sentence(response)
    upload = client.post(
        "/api/upload",
        params={"name": "x.png"},
        content=png(),
        headers={"content-type": "application/octet-stream", **headers},
    )
    assert upload.status_code == 403
    assert client.get("/api/images", headers=headers).status_code == 403  # reads too
    assert session.model_runs == 0


@pytest.mark.parametrize(
    "headers",
    [
        {},  # curl, scripts
        {"origin": OWN, "sec-fetch-site": "same-origin"},  # the page's own fetch
        {"origin": "http://127.0.0.1:80"},  # the default port written out
        {"origin": "HTTP://127.0.0.1"},
        {"sec-fetch-site": "none"},  # typed in the address bar
        {"sec-fetch-site": "same-origin"},
    ],
)
def test_own_origin_requests_are_served(client, headers):
    assert run_json(client, headers).status_code == 200
    upload = client.post(
        "/api/upload",
        params={"name": "x.png"},
        content=png(),
        headers={"content-type": "application/octet-stream", **headers},
    )
    assert upload.status_code == 200, upload.text


def test_the_page_itself_opens_from_a_link_on_another_site(client):
    """Navigating to the page (a GET of / or its assets) is no request to the API."""
    headers = {"sec-fetch-site": "cross-site"}
    assert client.get("/", headers=headers).status_code == 200
    assert client.get("/static/app.js", headers=headers).status_code == 200


# ----- body types: nothing a foreign page can send without a preflight -----


@pytest.mark.parametrize(
    "kind", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"]
)
def test_runs_must_be_json(client, session, kind):
    headers = {} if kind is None else {"content-type": kind}
    response = client.post("/api/run", content=json.dumps(BODY), headers=headers)
    assert response.status_code == 415 and "application/json" in one_sentence(response)
    assert session.model_runs == 0
    assert run_json(client, {"content-type": "application/json; charset=utf-8"}).status_code == 200


@pytest.mark.parametrize(
    "kind",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "image/png"],
)
def test_uploads_must_be_octet_streams(client, kind):
    headers = {} if kind is None else {"content-type": kind}
    response = client.post("/api/upload", params={"name": "x.png"}, content=png(), headers=headers)
    assert response.status_code == 415 and "application/octet-stream" in one_sentence(response)
    assert client.get("/api/images").json()["images"][-1]["source"] == "root"


def test_the_pages_script_sends_those_types():
    script = (STATIC / "app.js").read_text()
    upload = script[script.index("/api/upload") :][:300]
    assert '"content-type": "application/octet-stream"' in upload
    run = script[script.index('api("/api/run"') :][:200]
    assert '"content-type": "application/json"' in run


# ----- Host names -----


def test_host_rule_of_a_loopback_server():
    rule = HostRule.for_bind("127.0.0.1")
    for host in ("127.0.0.1", "127.0.0.1:8765", "localhost:8765", "LOCALHOST", "localhost.", "[::1]:8765"):
        assert rule.accepts(host), host
    for host in ("attacker.example", "attacker.example:8765", "10.0.0.5", "", "127.0.0.1:x", "[::1", "a:1:2"):
        assert not rule.accepts(host), host


def test_host_rule_of_a_server_on_every_address():
    """0.0.0.0 no longer accepts any Host: names must be this machine's, addresses any."""
    rule = HostRule.for_bind("0.0.0.0")
    for host in ("192.168.1.7:8765", "10.0.0.5", "[fe80::1]:8765", "localhost", socket.gethostname()):
        assert rule.accepts(host), host
    for host in ("attacker.example", "rebind.attacker.example:8765", "192.168.1.7.nip.io"):
        assert not rule.accepts(host), host
    assert HostRule.for_bind("::").accepts("[2001:db8::1]:80")


def test_host_rule_of_a_specific_address():
    rule = HostRule.for_bind("192.0.2.10", ["explore.lan"])
    for host in ("192.0.2.10:8765", "localhost", socket.gethostname(), "explore.lan:8765", "EXPLORE.LAN"):
        assert rule.accepts(host), host
    for host in ("192.0.2.11", "attacker.example", "10.0.0.5"):
        assert not rule.accepts(host), host


def test_a_wildcard_server_refuses_foreign_host_names(session):
    app = create_app(session, hosts=HostRule.for_bind("0.0.0.0"))
    with TestClient(app, base_url="http://192.168.1.7:8765") as client:
        assert client.get("/api/images").status_code == 200
        refused = client.get("/api/images", headers={"host": "attacker.example:8765"})
        assert refused.status_code == 400 and "host" in one_sentence(refused).lower()
        assert b"root:" not in refused.content


def test_same_origin_and_loopback_helpers():
    assert same_origin("http://127.0.0.1:8765", "127.0.0.1:8765", "http")
    assert same_origin("http://[::1]:8765", "[::1]:8765", "http")
    assert not same_origin("http://127.0.0.1:8765", "127.0.0.1:8766", "http")
    assert not same_origin("null", "127.0.0.1", "http") and not same_origin("", "127.0.0.1", "http")
    assert (
        is_loopback("127.0.0.1")
        and is_loopback("::1")
        and is_loopback("localhost")
        and is_loopback("127.1.2.3")
    )
    assert not is_loopback("0.0.0.0") and not is_loopback("192.0.2.10") and not is_loopback("")


# ----- the command line -----


@pytest.fixture
def served(monkeypatch, tiny):
    """Run ``ovearth explore`` without serving: keep the app and session it builds."""
    import uvicorn

    import ovearth.cli.explore as cli_explore
    from ovearth.explore import server

    built: dict = {}
    original = server.create_app

    def capture(session, **kwargs):
        built["session"], built["hosts"] = session, kwargs["hosts"]
        return original(session, **kwargs)

    def listen(host, port):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        return sock

    monkeypatch.setattr(server, "create_app", capture)
    monkeypatch.setattr(cli_explore, "_listen", listen)
    monkeypatch.setattr(cli_explore, "load_on", lambda *args: tiny)
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: None)
    return built


@pytest.mark.parametrize(
    ("host", "warned"),
    [("127.0.0.1", False), ("localhost", False), ("::1", False), ("0.0.0.0", True), ("192.0.2.10", True)],
)
def test_cli_warns_for_any_non_loopback_host(monkeypatch, capsys, served, root, host, warned):
    code, err = run_cli(monkeypatch, capsys, "explore", "--root", root, "--host", host, "--port", "0")
    assert code == 0, err
    assert ("warning" in err and "no login" in err) is warned
    assert not served["hosts"].accepts("attacker.example")  # the Host check stays on whatever --host is


def test_cli_memory_and_model_options(monkeypatch, capsys, served, root):
    code, err = run_cli(
        monkeypatch,
        capsys,
        "explore",
        "--root",
        root,
        "--run-memory-gb",
        "2.5",
        "--cache-memory-gb",
        "1",
        "--allow-model",
        "/models/clip",
        "--allow-model",
        "org/clip",
        "--allow-host",
        "explore.lan",
    )
    assert code == 0, err
    session = served["session"]
    assert session.budget.limit == 2_500_000_000 and session._names.max_bytes == 375_000_000
    assert session.allowed_models == ("/models/clip", "org/clip") and served["hosts"].accepts(
        "explore.lan:8765"
    )


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_cli_refuses_bad_memory_limits(monkeypatch, capsys, served, root, value):
    code, err = run_cli(monkeypatch, capsys, "explore", "--root", root, "--run-memory-gb", value)
    assert code == 1 and "--run-memory-gb must be a positive number" in err and "session" not in served
