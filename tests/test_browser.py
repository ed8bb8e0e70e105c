"""The page at GET /, end to end: a real uvicorn serving the app, driven by Debian's headless Chromium.

Each state is saved as a screenshot under test-artifacts/screenshots/ (desktop and phone) for a
person to look at. Needs /usr/bin/chromium (`apt-get install chromium`; .ci/run installs it).
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import torch
import uvicorn
from PIL import Image
from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright

from app.config import Settings
from app.main import create_app
from models import CLASS_NAMES

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
