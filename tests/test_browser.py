"""The page at GET /, end to end: a real uvicorn serving the app, driven by Debian's headless Chromium.

Each state is saved as a screenshot under test-artifacts/screenshots/ (desktop and phone) for a
person to look at. Needs /usr/bin/chromium (`apt-get install chromium`; .ci/run installs it).
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import uvicorn
from PIL import Image
from playwright.sync_api import Browser, Locator, Page, Playwright, Route, expect, sync_playwright
from pydantic import SecretStr

from app.config import Settings
from app.main import create_app
from models import CLASS_NAMES
from models.publishing import publish
from models.store import ModelStore, activated
from tests.conftest import make_artifact, wait_for
from tests.test_lifecycle import store_settings

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "app" / "static" / "samples"
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
VIEWPORTS = {"desktop": {"width": 1280, "height": 800}, "phone": {"width": 390, "height": 844}}
UPLOAD_LIMIT = 256 * 1024  # far above a sample or a drawing, far below the noise image of the 413 test
API_KEY = "browser-test-key"
ADMIN_KEY = "browser-admin-key"
SAMPLE_BAG = (SAMPLES / "8-bag.png").read_bytes()

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)"
    ),
]


@contextmanager
def serve(settings: Settings) -> Iterator[str]:
    """Run the app in a real uvicorn on a free loopback port, in a thread; yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(create_app(settings), log_config=None, log_level="warning", access_log=False, ws="none")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def browser_settings(artifact_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "model_path": artifact_path,
        "device": "cpu",
        "max_upload_bytes": UPLOAD_LIMIT,
        "log_level": "warning",
        **overrides,
    }
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def base_url(artifact_path: Path) -> Iterator[str]:
    with serve(browser_settings(artifact_path)) as url:
        yield url


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    # A prediction with explain=true on a loaded CI machine can outlast playwright's default 5 s.
    expect.set_options(timeout=20_000)
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
    yield browser
    browser.close()


@pytest.fixture
def open_page(browser: Browser) -> Iterator[Callable[..., Page]]:
    """Open the page at a base URL and viewport; on teardown fail on script errors and off-origin requests."""
    opened: list[tuple[Page, str, list[str], list[str]]] = []

    def factory(url: str, viewport: str = "desktop") -> Page:
        context = browser.new_context(viewport=VIEWPORTS[viewport])  # type: ignore[arg-type]
        page = context.new_page()
        page.set_default_timeout(10_000)
        requests: list[str] = []
        problems: list[str] = []
        page.on("request", lambda request: requests.append(request.url))
        page.on("pageerror", lambda error: problems.append(f"script error: {error}"))
        page.on(
            "console",
            lambda message: problems.append(message.text) if "Content Security Policy" in message.text else None,
        )
        page.goto(url + "/")
        opened.append((page, url, requests, problems))
        return page

    yield factory
    for page, url, requests, problems in opened:
        page.context.close()
        assert problems == []
        assert [r for r in requests if not r.startswith((url + "/", "data:", "blob:"))] == []


def screenshot(page: Page, name: str, viewport: str = "desktop") -> None:
    """Save the whole page for a person to look at; and it must never scroll sideways, phone included."""
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / f"{name}-{viewport}.png", full_page=True)


def api_prediction(base_url: str, data: bytes, headers: dict[str, str] | None = None) -> dict[str, object]:
    """What the API itself answers for these bytes: the page must show the same."""
    response = httpx.post(f"{base_url}/predict", files={"file": ("x.png", data)}, headers=headers or {})
    response.raise_for_status()
    result: dict[str, object] = response.json()
    return result


def expect_result(page: Page, class_name: str) -> None:
    """The winner is shown and highlighted, with ten bars in label order and the model's input image."""
    expect(page.locator("#class-name")).to_have_text(class_name)
    bars = page.locator("#bars > li")
    expect(bars).to_have_count(10)
    expect(page.locator("#bars .bar-name")).to_have_text(list(CLASS_NAMES))
    expect(page.locator("#bars > li.winner")).to_have_count(1)
    expect(page.locator("#bars > li.winner .bar-name")).to_have_text(class_name)
    expect(page.locator("#seen")).to_have_attribute("src", re.compile(r"^data:image/png;base64,"))
    expect(page.locator("#latency")).to_contain_text(" ms")


def bright_pixels_seen(page: Page) -> int:
    """Count the light pixels of the 28x28 image the server returned, as the browser decoded it."""
    return page.evaluate(
        """async () => {
            const img = document.getElementById('seen');
            await img.decode();  // a data URL still decodes asynchronously
            const canvas = document.createElement('canvas');
            canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
            const context = canvas.getContext('2d');
            context.drawImage(img, 0, 0);
            const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
            let bright = 0;
            for (let i = 0; i < data.length; i += 4) if (data[i] > 128) bright++;
            return [canvas.width, canvas.height, bright];
        }"""
    )


@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_upload_test_image_shows_class_and_ten_bars(
    open_page: Callable[..., Page], base_url: str, viewport: str
) -> None:
    image = SAMPLES / "9-ankle-boot.png"  # a real FashionMNIST test image
    expected = api_prediction(base_url, image.read_bytes())
    page = open_page(base_url, viewport)
    expect(page.locator("#server-status")).to_contain_text("Model ready")
    page.get_by_label("Choose an image…").set_input_files(image)
    expect(page.locator("#source")).to_contain_text("9-ankle-boot.png")
    page.get_by_role("button", name="Predict").click()
    expect_result(page, str(expected["class_name"]))
    probabilities = expected["probabilities"]
    assert isinstance(probabilities, dict)
    winner_percent = f"{probabilities[expected['class_name']] * 100:.1f}%"
    expect(page.locator("#bars > li.winner .bar-value")).to_have_text(winner_percent)
    expect(page.locator("#message")).to_have_text(f"Predicted {expected['class_name']} ({winner_percent}).")
    screenshot(page, "upload-result", viewport)


def test_draw_stroke_then_predict_sends_the_drawing(open_page: Callable[..., Page], base_url: str) -> None:
    page = open_page(base_url)
    canvas = page.get_by_role("img", name="Drawing area, 280 by 280: draw with a mouse, pen or finger")
    box = canvas.bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.2)
    page.mouse.down()
    for step in range(1, 11):  # a vertical stroke down the middle third
        page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * (0.2 + 0.06 * step))
    page.mouse.up()
    expect(page.locator("#source")).to_have_text("Will predict: your drawing")
    page.get_by_role("button", name="Predict").click()
    # Waiting on the message names what went wrong (an error body, a slow machine) where a bar count would not.
    expect(page.locator("#message")).to_have_text(re.compile(r"^Predicted "))
    expect(page.locator("#bars > li")).to_have_count(10)
    width, height, bright = bright_pixels_seen(page)
    # The stroke reached the model: a black canvas would give 0 light pixels of 784.
    assert (width, height) == (28, 28)
    assert 10 < bright < 200
    screenshot(page, "draw-result")


@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_text_file_shows_not_an_image_error(open_page: Callable[..., Page], base_url: str, viewport: str) -> None:
    page = open_page(base_url, viewport)
    page.get_by_label("Choose an image…").set_input_files(
        {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not a picture at all\n"}
    )
    page.get_by_role("button", name="Predict").click()
    message = page.locator("#message")
    expect(message).to_contain_text("Not an image the model can read: not an image in a supported format")
    expect(message).to_have_attribute("data-kind", "error")
    expect(message).to_have_attribute("aria-live", "polite")
    expect(page.locator("#result")).to_be_hidden()
    screenshot(page, "error-not-an-image", viewport)


def test_too_big_upload_shows_limit_error(open_page: Callable[..., Page], base_url: str, tmp_path: Path) -> None:
    noise = Image.frombytes("L", (700, 700), torch.randint(0, 256, (700 * 700,), dtype=torch.uint8).numpy().tobytes())
    path = tmp_path / "noise.png"
    noise.save(path)
    assert path.stat().st_size > UPLOAD_LIMIT
    page = open_page(base_url)
    page.get_by_label("Choose an image…").set_input_files(path)
    page.get_by_role("button", name="Predict").click()
    expect(page.locator("#message")).to_have_text(
        re.compile(rf"Too big: request body of [\d,]+\+ bytes exceeds the limit of {UPLOAD_LIMIT:,} bytes\.")
    )
    screenshot(page, "error-too-big")


def test_sample_classifies_in_one_keypress(open_page: Callable[..., Page], base_url: str) -> None:
    expected = api_prediction(base_url, (SAMPLES / "1-trouser.png").read_bytes())
    page = open_page(base_url)
    sample = page.get_by_role("button", name="Classify sample: Trouser (test image 2)")
    sample.focus()
    page.keyboard.press("Enter")
    expect_result(page, str(expected["class_name"]))
    verdict = "Right" if expected["class_name"] == "Trouser" else "Wrong"
    expect(page.locator("#truth")).to_have_text(f"{verdict}: the test set says Trouser.")
    screenshot(page, "sample-result")


@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_layers_view_lists_parameters_and_module_tree(
    open_page: Callable[..., Page], base_url: str, viewport: str
) -> None:
    params = httpx.get(f"{base_url}/model/params").json()
    page = open_page(base_url, viewport)
    page.get_by_role("link", name="Layers").click()
    expect(page.get_by_role("heading", name="Layers and parameters")).to_be_focused()
    expect(page.get_by_role("link", name="Layers")).to_have_attribute("aria-current", "page")
    rows = page.locator("#params tbody tr:not(.layer)")
    expect(rows).to_have_count(len(params["parameters"]))
    expect(rows.locator("th")).to_have_text([p["name"] for p in params["parameters"]])
    expect(rows.first.locator("td").nth(0)).to_have_text("512 × 784")
    # One group per layer, described as PyTorch prints it.
    expect(page.locator("#params tr.layer")).to_have_text(
        [
            "linear_relu_stack.0 Linear(in_features=784, out_features=512, bias=True)",
            "linear_relu_stack.2 Linear(in_features=512, out_features=512, bias=True)",
            "linear_relu_stack.4 Linear(in_features=512, out_features=10, bias=True)",
        ]
    )
    expect(page.locator("#model-summary")).to_contain_text(f"{params['total_parameters']:,}")
    expect(page.locator("#module-tree")).to_contain_text("Linear(in_features=784, out_features=512, bias=True)")
    expect(page.locator("#view-try")).to_be_hidden()
    screenshot(page, "layers", viewport)


def test_controls_are_labelled_and_reachable_by_keyboard(open_page: Callable[..., Page], base_url: str) -> None:
    page = open_page(base_url)
    expect(page.locator("#samples button")).to_have_count(10)
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input, button, select, textarea, canvas, a[href]')]
            .filter((el) => !((el.labels && el.labels.length) || el.getAttribute('aria-label')
                              || el.getAttribute('aria-labelledby') || el.textContent.trim()))
            .map((el) => el.outerHTML)"""
    )
    assert unlabelled == []
    focused: list[str] = []
    for _ in range(30):
        page.keyboard.press("Tab")
        focused.append(page.evaluate("document.activeElement.id || document.activeElement.getAttribute('aria-label')"))
    for control in ("nav-layers", "file", "clear", "predict", "Classify sample: Bag (test image 18)"):
        assert control in focused


def test_not_ready_server_explains_why(open_page: Callable[..., Page], tmp_path: Path) -> None:
    with serve(browser_settings(tmp_path / "missing.safetensors")) as url:
        page = open_page(url)
        expect(page.locator("#server-status")).to_contain_text("Not ready: model not loaded")
        page.get_by_role("button", name="Classify sample: Bag (test image 18)").click()
        expect(page.locator("#message")).to_contain_text("The server is not ready: model not loaded")
        expect(page.locator("#message")).to_contain_text("Try again in 5 s.")
        screenshot(page, "error-not-ready")


def test_api_key_is_asked_for_then_sent(open_page: Callable[..., Page], artifact_path: Path) -> None:
    with serve(browser_settings(artifact_path, api_key=API_KEY)) as url:
        page = open_page(url)
        sample = page.get_by_role("button", name="Classify sample: Sneaker (test image 9)")
        sample.click()
        expect(page.locator("#message")).to_contain_text("API key needed")
        key = page.get_by_label("API key, only if the server asks for one")
        expect(key).to_be_focused()
        key.fill(API_KEY)
        sample.click()
        expected = api_prediction(url, (SAMPLES / "7-sneaker.png").read_bytes(), {"Authorization": f"Bearer {API_KEY}"})
        expect_result(page, str(expected["class_name"]))
        assert page.evaluate("sessionStorage.getItem('fashion-serve.api-key')") == API_KEY
        screenshot(page, "api-key")


def test_page_is_served_with_a_strict_content_security_policy(base_url: str) -> None:
    response = httpx.get(base_url + "/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in response.headers["content-security-policy"]
    assert httpx.get(base_url + "/static/app.js").status_code == 200
    assert httpx.get(base_url + "/static/../main.py").status_code == 404


def test_api_docs_link_shows_every_operation_from_this_server(open_page: Callable[..., Page], base_url: str) -> None:
    """Swagger UI's script and stylesheet come from this server: the page works with no internet at all."""
    schema = httpx.get(base_url + "/openapi.json").json()
    operations = sorted(f"{method.upper()} {path}" for path, item in schema["paths"].items() for method in item)
    page = open_page(base_url)
    page.get_by_role("link", name="API docs").click()
    expect(page).to_have_url(base_url + "/docs")
    expect(page.locator(".info .title")).to_contain_text(schema["info"]["title"])
    blocks = page.locator(".opblock")
    expect(blocks).to_have_count(len(operations))
    methods = blocks.locator(".opblock-summary-method").all_inner_texts()
    paths = [path.get_attribute("data-path") for path in blocks.locator(".opblock-summary-path").all()]
    shown = [f"{method} {path}" for method, path in zip(methods, paths, strict=True)]
    assert sorted(shown) == operations
    predict = page.locator(".opblock-post").filter(has=page.locator('[data-path="/predict"]'))
    predict.locator(".opblock-summary").click()
    expect(predict.get_by_role("button", name="Try it out")).to_be_visible()
    screenshot(page, "api-docs")
    docs = httpx.get(base_url + "/docs")
    assert docs.headers["content-security-policy"] == httpx.get(base_url + "/").headers["content-security-policy"]
    assert httpx.get(base_url + "/redoc").status_code == 404  # ReDoc has no offline copy: off, not half-working


def test_explanation_overlays_the_input_and_a_non_garment_is_warned_about(
    open_page: Callable[..., Page], trained_artifact: Path, tmp_path: Path
) -> None:
    """With a really trained model: a sample shows its map over the 28x28 input and no warning; a flat grey
    picture gets the "may not be a garment" warning; the toggle hides the map."""
    with serve(browser_settings(trained_artifact)) as url:
        page = open_page(url)
        expect(page.locator("#server-status")).to_contain_text("Model ready")
        page.get_by_role("button", name="Classify sample: Trouser (test image 2)").click()
        expect(page.locator("#heatmap")).to_be_visible()
        expect(page.locator("#heatmap")).to_have_attribute("src", re.compile(r"^data:image/png;base64,"))
        expect(page.locator("#not-garment")).to_be_hidden()
        screenshot(page, "explained-sample")
        page.locator("#show-explanation").uncheck()
        expect(page.locator("#heatmap")).to_be_hidden()
        page.locator("#show-explanation").check()
        grey = tmp_path / "grey.png"
        Image.new("L", (28, 28), 128).save(grey)
        page.get_by_label("Choose an image…").set_input_files(grey)
        page.get_by_role("button", name="Predict").click()
        expect(page.locator("#not-garment")).to_be_visible()
        expect(page.locator("#not-garment")).to_contain_text("may not be a garment")
        screenshot(page, "not-a-garment")


# ---- the Models view: a model store behind the page --------------------------------------------------------


@dataclass
class StoreServer:
    url: str
    store: ModelStore
    serving: str  # full digests: serving at the start
    other: str  # valid, available
    weak: str  # its recorded accuracy is below the minimum: refused at publishing

    def models(self) -> dict[str, Any]:
        """GET /models as the API answers it, for the test to check the page against."""
        response = httpx.get(self.url + "/models")
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body


@contextmanager
def serve_store(tmp_path: Path, **overrides: object) -> Iterator[StoreServer]:
    """A store with two valid versions (the first serving) and a refused one, served in a real uvicorn."""
    store = ModelStore(tmp_path / "store")
    serving = publish(store, make_artifact(tmp_path, 1, accuracy=0.93)).digest
    other = publish(store, make_artifact(tmp_path, 2, accuracy=0.91), promote=False).digest
    weak = publish(store, make_artifact(tmp_path, 3, accuracy=0.5)).digest
    assert store.read_state().serving == serving and weak in store.read_state().refused
    with serve(store_settings(store, log_level="warning", **overrides)) as url:
        yield StoreServer(url, store, serving, other, weak)


@pytest.fixture
def store_server(tmp_path: Path) -> Iterator[StoreServer]:
    with serve_store(tmp_path, admin_key=SecretStr(ADMIN_KEY)) as server:
        yield server


def open_models(open_page: Callable[..., Page], url: str, viewport: str = "desktop") -> Page:
    page = open_page(url, viewport)
    page.get_by_role("link", name="Models").click()
    expect(page.get_by_role("heading", name="Model versions")).to_be_focused()
    return page


def version_row(page: Page, version: str) -> Locator:
    return page.locator(f'#versions tbody tr[data-version="{version[:12]}"]')


def expect_serving(page: Page, server: StoreServer, version: str) -> None:
    """The page marks ``version`` as the serving one, and so does the API."""
    expect(page.locator('#versions tr[aria-current="true"]')).to_have_count(1)
    expect(version_row(page, version)).to_have_attribute("aria-current", "true")
    expect(version_row(page, version).locator(".state")).to_have_text("serving")
    assert server.models()["serving"] == version[:12]


def stored_anywhere(page: Page) -> str:
    """Everything the page could have kept beyond its memory: storage, cookies and its URL."""
    script = "JSON.stringify([{...localStorage}, {...sessionStorage}, document.cookie, location.href, history.state])"
    return str(page.evaluate(script))


@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_models_view_lists_versions_and_marks_the_serving_one(
    open_page: Callable[..., Page], store_server: StoreServer, viewport: str
) -> None:
    page = open_models(open_page, store_server.url, viewport)
    expect(page.get_by_role("link", name="Models")).to_have_attribute("aria-current", "page")
    expect(page.locator("#versions tbody tr")).to_have_count(3)
    expect_serving(page, store_server, store_server.serving)
    expect(version_row(page, store_server.serving).locator("td").nth(1)).to_have_text("93.00%")
    expect(version_row(page, store_server.other).locator(".state")).to_have_text("available")
    expect(version_row(page, store_server.other).locator("td").nth(1)).to_have_text("91.00%")
    expect(version_row(page, store_server.other).locator("td").nth(2)).to_have_text(re.compile(r"^\d{4}-\d\d-\d\d "))
    weak = version_row(page, store_server.weak)
    expect(weak.locator(".state")).to_have_text("refused")
    expect(weak.locator("td.reason")).to_have_text("its recorded accuracy 0.5000 is below the minimum 0.9000")
    expect(page.locator("#models-summary")).to_contain_text(f"Serving{store_server.serving[:12]}")
    expect(page.locator("#models-message")).to_contain_text("3 versions in the store")
    # The choice offers every version but the serving one, a valid one first, the refused one last.
    expect(page.locator("#change-version option")).to_have_text(
        [f"{store_server.other[:12]} (available)", f"{store_server.weak[:12]} (refused)"]
    )
    traffic_controls = page.get_by_role("button", name=re.compile(r"^Start (shadow|canary)$"))
    expect(traffic_controls).to_have_count(2)
    expect(page.locator("#view-try")).to_be_hidden()
    screenshot(page, "models", viewport)
    focused = []
    for _ in range(12):  # from the focused heading: every control of the view, in order (percent when shown)
        page.keyboard.press("Tab")
        focused.append(page.evaluate("document.activeElement.id"))
    controls = ["models-refresh", "versions-region", "admin-key", "forget-admin-key", "change-version", "activate"]
    controls.append("rollback")
    assert [control for control in focused if control in controls] == controls


def test_models_view_activates_and_rolls_back_with_the_admin_key(
    open_page: Callable[..., Page], store_server: StoreServer
) -> None:
    page = open_models(open_page, store_server.url)
    page.get_by_label("Admin key").fill(ADMIN_KEY)
    page.get_by_label("Version to change").select_option(store_server.other[:12])
    page.get_by_role("button", name="Activate").click()
    message = page.locator("#change-message")
    expect(message).to_have_text(f"{store_server.other[:12]} serves now (was {store_server.serving[:12]}).")
    expect(message).to_have_attribute("data-kind", "ok")
    expect_serving(page, store_server, store_server.other)
    expect(page.locator("#server-status")).to_contain_text(f"Model ready · {store_server.other[:12]}")
    expect(page.locator("#rollback-hint")).to_have_text(f"to {store_server.serving[:12]}, which served before")
    screenshot(page, "models-activated")
    page.get_by_role("button", name="Roll back").click()
    expect(message).to_have_text(
        f"Rolled back: {store_server.serving[:12]} serves again (was {store_server.other[:12]})."
    )
    expect_serving(page, store_server, store_server.serving)
    assert ADMIN_KEY not in stored_anywhere(page)
    page.get_by_role("button", name="Forget key").click()
    expect(page.get_by_label("Admin key")).to_have_value("")
    page.get_by_role("button", name="Activate").click()
    expect(message).to_contain_text("Enter the admin key first")
    assert store_server.models()["serving"] == store_server.serving[:12]


def test_models_view_without_or_with_a_wrong_key_changes_nothing(
    open_page: Callable[..., Page], store_server: StoreServer
) -> None:
    generation = store_server.store.read_state().generation
    page = open_models(open_page, store_server.url)
    page.get_by_label("Version to change").select_option(store_server.other[:12])
    page.get_by_role("button", name="Activate").click()
    message = page.locator("#change-message")
    expect(message).to_have_text("Enter the admin key first: changes need the server's FASHION_ADMIN_KEY.")
    expect(message).to_have_attribute("data-kind", "error")
    expect(page.get_by_label("Admin key")).to_be_focused()
    page.get_by_label("Admin key").fill("not-the-admin-key")
    page.get_by_role("button", name="Activate").click()
    expect(message).to_have_text(
        "Not changed: the admin key was not accepted (missing or wrong admin key: send 'Authorization: Bearer <key>')."
    )
    page.get_by_role("button", name="Roll back").click()
    expect(message).to_contain_text("Not changed: the admin key was not accepted")
    assert store_server.store.read_state().generation == generation
    expect_serving(page, store_server, store_server.serving)
    # The right key, a refused version: the server's reason, and still nothing changes.
    page.get_by_label("Admin key").fill(ADMIN_KEY)
    page.get_by_label("Version to change").select_option(store_server.weak[:12])
    page.get_by_role("button", name="Activate").click()
    expect(message).to_have_text(
        f"Not changed: version {store_server.weak[:12]} is refused: "
        "its recorded accuracy 0.5000 is below the minimum 0.9000."
    )
    expect_serving(page, store_server, store_server.serving)
    assert ADMIN_KEY not in stored_anywhere(page)
    screenshot(page, "models-refused")


def test_models_view_lists_with_the_api_key_and_changes_with_the_admin_key(
    open_page: Callable[..., Page], tmp_path: Path
) -> None:
    """Both keys set: the list takes the API key (from the header's panel), a change the admin key alone."""
    with serve_store(tmp_path, api_key=SecretStr(API_KEY), admin_key=SecretStr(ADMIN_KEY)) as server:
        page = open_page(server.url)
        page.get_by_role("link", name="Models").click()
        expect(page.locator("#models-message")).to_contain_text("API key needed")
        api_key = page.get_by_label("API key, only if the server asks for one")
        expect(api_key).to_be_focused()
        api_key.fill(API_KEY)
        page.get_by_role("button", name="Refresh").click()
        expect(page.locator("#versions tbody tr")).to_have_count(3)
        page.get_by_label("Admin key").fill(ADMIN_KEY)
        page.get_by_label("Version to change").select_option(server.other[:12])
        page.get_by_role("button", name="Activate").click()
        expect(page.locator("#change-message")).to_have_text(
            f"{server.other[:12]} serves now (was {server.serving[:12]})."
        )
        expect(version_row(page, server.other)).to_have_attribute("aria-current", "true")
        assert server.store.read_state().serving == server.other
        stored = stored_anywhere(page)
        assert API_KEY in stored and ADMIN_KEY not in stored  # the API key is kept for the tab, as documented


def test_models_view_says_changes_are_off_without_a_server_admin_key(
    open_page: Callable[..., Page], tmp_path: Path
) -> None:
    with serve_store(tmp_path) as server:
        page = open_models(open_page, server.url)
        page.get_by_label("Admin key").fill(ADMIN_KEY)
        page.get_by_label("Version to change").select_option(server.other[:12])
        page.get_by_role("button", name="Activate").click()
        expect(page.locator("#change-message")).to_have_text(
            "Not changed: model changes are off on this server "
            "(model changes are off: set FASHION_ADMIN_KEY on the server to allow them)."
        )
        expect_serving(page, server, server.serving)


def test_models_view_names_what_the_store_names_when_this_worker_serves_another(
    open_page: Callable[..., Page], store_server: StoreServer
) -> None:
    page = open_models(open_page, store_server.url)
    expect(page.locator("#models-note")).to_be_hidden()
    # An operator edits the state by hand to name the refused version: the worker keeps the last good one.
    store_server.store.update_state(lambda state: activated(state, store_server.weak, "by hand"))
    wait_for(lambda: store_server.models()["note"] is not None, "the worker's note on the refused version", 10)
    page.get_by_role("button", name="Refresh").click()
    note = page.locator("#models-note")
    expect(note).to_contain_text(f"The state names {store_server.weak[:12]}, which this worker refused")
    expect(note).to_contain_text(f"serving {store_server.serving[:12]}, the last good version")
    expect(page.locator("#models-summary")).to_contain_text(f"The store names{store_server.weak[:12]}")
    expect_serving(page, store_server, store_server.serving)
    screenshot(page, "models-note")


def test_models_view_on_a_single_file_server_says_so_quietly(open_page: Callable[..., Page], base_url: str) -> None:
    page = open_models(open_page, base_url)
    message = page.locator("#models-message")
    expect(message).to_have_text(
        "This server serves one file, not a model store: there are no versions to list or change."
    )
    expect(message).not_to_have_attribute("data-kind", "error")
    expect(page.locator("#models-store")).to_be_hidden()
    screenshot(page, "models-single-file")


def test_models_view_starts_and_stops_a_real_shadow_and_canary(
    open_page: Callable[..., Page], store_server: StoreServer
) -> None:
    other = store_server.other[:12]
    page = open_models(open_page, store_server.url)
    page.get_by_label("Admin key").fill(ADMIN_KEY)
    page.get_by_label("Version to change").select_option(other)
    page.get_by_label("Share of requests (%)").fill("100")
    page.get_by_role("button", name="Start shadow").click()
    message = page.locator("#change-message")
    expect(message).to_have_text(f"{other} is the shadow now: it also runs on 100% of requests.")
    expect(version_row(page, other).locator(".state")).to_have_text("shadow, 100%")
    assert store_server.models()["shadow"]["version"] == other
    for _ in range(3):
        assert httpx.post(f"{store_server.url}/predict", files={"file": ("s.png", SAMPLE_BAG)}).status_code == 200
    # The shadow runs off the response path: its tally follows the answers.
    wait_for(lambda: store_server.models()["shadow"]["compared"] >= 3, "the shadow to compare three answers", 10)
    page.get_by_role("button", name="Refresh").click()
    expect(page.locator("#models-summary")).to_contain_text(
        re.compile(rf"Shadow{other} at 100%agrees on [\d.]+% of 3 compared · \d+ skipped")
    )
    screenshot(page, "models-real-shadow")
    page.get_by_role("button", name=f"Stop shadow ({other})").click()
    expect(message).to_have_text(f"{other} is no longer the shadow.")
    assert store_server.models()["shadow"] is None
    page.get_by_label("Share of requests (%)").fill("50")
    page.get_by_role("button", name="Start canary").click()
    expect(message).to_have_text(f"{other} is the canary now: it answers 50% of requests.")
    expect(page.locator("#models-summary")).to_contain_text(f"Canary{other} at 50%")
    assert store_server.models()["canary"]["version"] == other
    page.get_by_role("button", name=f"Stop canary ({other})").click()
    expect(message).to_have_text(f"{other} is no longer the canary.")
    assert store_server.models()["canary"] is None
    expect_serving(page, store_server, store_server.serving)


def test_models_view_shows_and_changes_shadow_and_canary_as_the_contract_says(
    open_page: Callable[..., Page], store_server: StoreServer
) -> None:
    """GET /models answered by the test with figures no real run gives (the real body plus the contract's fields,
    docs/lifecycle.md), and the changes caught before they reach the server: the page against the contract alone."""
    body = store_server.models()
    shadow, canary = store_server.other[:12], store_server.weak[:12]
    body["shadow"] = {"version": shadow, "percent": 25.0, "compared": 1234, "agreement": 0.975, "skipped": 3,
                      "latency_ms": 1.5}  # fmt: skip
    body["canary"] = {"version": canary, "percent": 10.0, "answered": 56}
    for entry in body["versions"]:
        if entry["version"] in (shadow, canary):
            entry |= {"state": "shadow" if entry["version"] == shadow else "canary", "reason": None}
        entry["loaded"] = True
    changes: list[tuple[str, str, str | None, str | None]] = []

    def answer(route: Route) -> None:
        request = route.request
        if request.method == "GET":
            route.fulfill(json=body)
            return
        changes.append((request.method, request.url, request.post_data, request.headers.get("authorization")))
        route.fulfill(json={"serving": store_server.serving[:12], "previous": None, "generation": 9})

    page = open_page(store_server.url)
    page.route(re.compile(r"/models(/[0-9a-f]+/(shadow|canary))?$"), answer)
    page.get_by_role("link", name="Models").click()
    summary = page.locator("#models-summary")
    expect(summary).to_contain_text(f"Shadow{shadow} at 25%agrees on 97.5% of 1,234 compared · 3 skipped · 1.50 ms")
    expect(summary).to_contain_text(f"Canary{canary} at 10%56 answered here")
    expect(version_row(page, shadow).locator(".state")).to_have_text("shadow, 25%")
    expect(version_row(page, canary).locator(".state")).to_have_text("canary, 10%")
    screenshot(page, "models-shadow-canary")
    page.get_by_label("Admin key").fill(ADMIN_KEY)
    page.get_by_label("Version to change").select_option(shadow)
    page.get_by_label("Share of requests (%)").fill("0")
    page.get_by_role("button", name="Start canary").click()
    expect(page.locator("#change-message")).to_contain_text("The share must be more than 0 and at most 100")
    page.get_by_label("Share of requests (%)").fill("12.5")
    page.get_by_role("button", name="Start canary").click()
    expect(page.locator("#change-message")).to_have_text(f"{shadow} is the canary now: it answers 12.5% of requests.")
    page.get_by_role("button", name=f"Stop shadow ({shadow})").click()
    expect(page.locator("#change-message")).to_have_text(f"{shadow} is no longer the shadow.")
    bearer = f"Bearer {ADMIN_KEY}"
    assert [(method, url, data and json.loads(data), key) for method, url, data, key in changes] == [
        ("PUT", f"{store_server.url}/models/{shadow}/canary", {"percent": 12.5}, bearer),
        ("DELETE", f"{store_server.url}/models/{shadow}/shadow", None, bearer),
    ]
