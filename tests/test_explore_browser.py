"""``ovearth explore`` in a real browser: headless Chromium drives the page over the tiny model.

The server is the real command (``python -m ovearth explore``) on a free port. The test
opens an image, types classes, runs, sees the overlay and the legend, toggles a class,
reads the scores under the pointer, and saves a screenshot to ``$OVEARTH_TEST_ARTIFACTS``
(default ``out/test-artifacts/``). It needs Debian's ``chromium`` (``.ci/run`` installs it)
and the ``playwright`` package (its driver only: the browser is the system's).
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import make_image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)"
)
playwright = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")

ARTIFACTS = Path(
    os.environ.get("OVEARTH_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "out" / "test-artifacts")
)

#: Chromium without a network, a profile or background services
BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


@pytest.fixture(scope="module")
def server(tiny_dir, tmp_path_factory):
    """``ovearth explore`` on a free port; yields its URL."""
    root = tmp_path_factory.mktemp("browser-root")
    Image.fromarray(make_image(11, 192, 256)).save(root / "field.png")
    Image.fromarray(make_image(12, 64, 64)).save(root / "small.png")
    command = [sys.executable, "-m", "ovearth", "explore", "--root", str(root), "--model", str(tiny_dir)]
    command += ["--device", "cpu", "--port", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    url = None
    try:
        while url is None:
            line = lines.get(timeout=120)
            found = re.search(r"http://127\.0\.0\.1:\d+/", line)
            url = found.group(0) if found else None
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert process.returncode in (0, -15), "the server did not stop cleanly"


def api(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def test_page_in_chromium(server):
    from playwright.sync_api import expect, sync_playwright

    outside: list[str] = []
    errors: list[str] = []
    with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        context = p.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=BROWSER_ARGS,
            viewport={"width": 1280, "height": 1000},
        )
        try:
            # the page works offline: count (and refuse) any request that is not to the server
            context.route(
                "**/*",
                lambda route: (
                    route.continue_()
                    if route.request.url.startswith(server) or route.request.url.startswith("data:")
                    else (outside.append(route.request.url), route.abort())
                ),
            )
            page = context.new_page()
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on(
                "console", lambda message: errors.append(message.text) if message.type == "error" else None
            )
            page.goto(server)

            # open an image
            expect(page.locator("#image option[value='root:field.png']")).to_have_count(1)
            page.select_option("#image", "root:field.png")
            expect(page.locator("#picture")).to_have_attribute("src", re.compile("field.png"))

            # type classes, run: the overlay and the legend appear
            page.fill("#classes", "")
            page.locator("#classes").type("building, roof\nroad\ntree")
            page.fill("#prob_thd", "0.2")
            page.click("#run")
            expect(page.locator("#status")).to_contain_text("4 name(s): 4 through the model")
            overlay = page.locator("#overlay")
            expect(overlay).to_be_visible()
            page.wait_for_function("() => document.getElementById('overlay').naturalWidth === 256")
            rows = page.locator("#legend tbody tr")
            expect(rows.filter(has_text="building")).to_have_count(1)
            expect(rows.filter(has_text="road")).to_have_count(1)
            colours = page.locator("#legend tbody .swatch").evaluate_all(
                "s => s.map(e => e.style.background)"
            )
            assert len({c for c in colours[:3]}) == 3 and all(c.startswith("rgb(") for c in colours[:3])
            expect(page.locator("#scores img")).to_have_count(3)
            expect(page.locator("#names tbody tr")).to_have_count(4)

            # toggle a class off: the page re-runs without the model
            page.locator("#legend input[type=checkbox][data-class='road']").uncheck()
            expect(page.locator("#status")).to_contain_text("3 name(s): 0 through the model, 3 reused")
            expect(page.locator("#scores img")).to_have_count(2)
            expect(rows.filter(has_text="road")).to_have_class("off")
            result = page.evaluate("state.result")
            assert [c["name"] for c in result["classes"]] == ["building", "tree"]

            # the readout under the pointer equals the API's scores at that pixel
            box = overlay.bounding_box()
            page.mouse.move(box["x"] + box["width"] * 0.25, box["y"] + box["height"] * 0.5)
            readout = page.locator("#readout")
            expect(readout).to_contain_text("building ")
            text = readout.inner_text()
            x, y = (int(v) for v in re.match(r"\((\d+), (\d+)\)", text).groups())
            assert abs(x - 64) <= 2 and abs(y - 96) <= 2
            pixel = api(f"{server}api/results/{result['id']}/pixel?x={x}&y={y}")
            for score in pixel["scores"]:
                assert f"{score['class']} {score['score']:.3f}" in text
            assert pixel["label"] in text

            # a bad refiner: the error is shown and the page keeps working
            page.fill("#refine", "nosuch")
            page.click("#run")
            expect(page.locator("#error")).to_contain_text("nosuch")
            page.fill("#refine", "")
            page.click("#run")
            expect(page.locator("#error")).to_be_hidden()

            # attention of a class
            page.click("#attention-run")
            expect(page.locator("#attention img")).to_have_count(3)
            expect(page.locator("#attention-info")).to_contain_text("presence")
            loaded = "() => [...document.images].every(i => !i.src || (i.complete && i.naturalWidth > 0))"
            page.wait_for_function(loaded)

            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "explore_browser.png"), full_page=True)
        finally:
            context.close()
    assert outside == [], "the page asked for something outside the server"
    unexpected = [e for e in errors if "status of 400" not in e]
    assert unexpected == [] and len(errors) == 1  # the one bad refiner's answer
    assert (ARTIFACTS / "explore_browser.png").stat().st_size > 10_000
