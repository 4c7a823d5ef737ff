"""`relightful serve`'s page in a real browser: headless Chromium, driven by Selenium, against uvicorn on a socket.

The page's own script uploads the files, posts them and shows paste | result; the test reads back the PNGs the page
shows (the blob bytes and the pixels the browser decoded into a canvas) and checks them against the `Harmonizer`'s
output for the same inputs and seed: byte-equal everywhere, so the background is the uploaded one, cover-resized,
wherever the matte is 0. Needs Debian's browser and driver (`apt-get install chromium chromium-driver`; `make install`
does it as root); skipped without them. Selenium uses /usr/bin/chromedriver, so it downloads nothing.
"""

from __future__ import annotations

import base64
import os
import socket
import threading
import time

import cv2
import numpy as np
import pytest

from relightful.models.compositing import cover_resize, paste
from relightful.models.harmonizer import Harmonizer
from relightful.serving import ServeConfig, create_app


CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"

pytestmark = pytest.mark.skipif(
    not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)),
    reason=f"needs {CHROMIUM} and {CHROMEDRIVER}: `apt-get install chromium chromium-driver` (as root; "
           "`make install` does it)")

# Reads the PNG an <img> shows: its blob's bytes, and its pixels as the browser decoded them (drawn into a canvas).
READ_IMAGE = """
const done = arguments[arguments.length - 1];
(async () => {
  const img = document.getElementById(arguments[0]);
  const bytes = new Uint8Array(await (await fetch(img.src)).arrayBuffer());
  const canvas = document.createElement("canvas");
  canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.drawImage(img, 0, 0);
  const rgba = new Uint8Array(context.getImageData(0, 0, canvas.width, canvas.height).data.buffer);
  const b64 = (a) => { let s = ""; for (let i = 0; i < a.length; i += 8192)
                         s += String.fromCharCode.apply(null, a.subarray(i, i + 8192)); return btoa(s); };
  return { png: b64(bytes), rgba: b64(rgba), width: img.naturalWidth, height: img.naturalHeight };
})().then(done, (err) => done({ error: String(err) }));
"""


@pytest.fixture(scope="module")
def harmonizer(micro_harmonizer) -> Harmonizer:
    return micro_harmonizer


@pytest.fixture(scope="module")
def server(harmonizer):
    """The app on uvicorn, on a free port of 127.0.0.1, in a thread; stopped at the end."""
    import uvicorn

    app = create_app(harmonizer, ServeConfig(max_upload_bytes=2_000_000, max_pixels=1_000_000, matting="grabcut"),
                     model_name="micro")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    uv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        uv.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1280,1024"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _portrait(height: int = 64, width: int = 48):
    """A synthetic portrait (head and shoulders over a gradient, with grain), its soft matte, a background of
    another aspect (so it is cover-resized and cropped)."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    head = np.hypot((yy - 0.35 * height) / (0.22 * height), (xx - width / 2) / (0.25 * width))
    body = np.hypot((yy - 1.05 * height) / (0.45 * height), (xx - width / 2) / (0.48 * width))
    inside = np.minimum(head, body)
    matte = np.clip((1.08 - inside) / 0.16, 0.0, 1.0)  # soft edges, 0 well outside
    backdrop = np.stack([40 + 120 * yy / height, 90 + 0 * xx, 160 - 80 * xx / width], -1)
    skin = np.array([205.0, 150.0, 120.0]) * (0.75 + 0.25 * np.cos((xx - width / 2) / width * np.pi))[..., None]
    fg = matte[..., None] * skin + (1 - matte[..., None]) * backdrop + rng.normal(0, 6, (height, width, 3))
    bg = rng.integers(0, 256, (50, 100, 3)).astype(np.float32)
    bg[:, :50] *= np.array([1.0, 0.6, 0.3])  # a warm half and a plain half
    return (np.clip(fg, 0, 255).round().astype(np.uint8), matte.astype(np.float32),
            bg.round().astype(np.uint8))


def _write(path, image: np.ndarray) -> str:
    image = image if image.ndim == 2 else image[..., ::-1]
    assert cv2.imwrite(str(path), np.ascontiguousarray(image))
    return str(path)


def _submit(driver, paths: dict[str, str | None]) -> dict:
    """Choose the files (None clears a field), click the button, wait for the page to show the new result."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    for field, path in paths.items():
        element = driver.find_element(By.ID, field)
        if path is None:
            driver.execute_script("arguments[0].value = '';", element)
        else:
            element.send_keys(path)
    before = driver.execute_script("return document.getElementById('result').src;")
    driver.find_element(By.ID, "submit").click()

    def shown(d):
        state = d.execute_script("""
            const img = document.getElementById('result'), status = document.getElementById('status');
            return { src: img.src, complete: img.complete, width: img.naturalWidth, status: status.textContent,
                     error: status.className === 'error' };""")
        if state["error"]:
            raise AssertionError(f"the page shows an error: {state['status']}")
        return state["src"] != before and state["complete"] and state["width"] > 0 \
            and state["status"].startswith("done") and state

    return WebDriverWait(driver, 60, poll_frequency=0.1).until(shown)


def _read(driver, element_id: str) -> tuple[np.ndarray, np.ndarray]:
    """(the PNG's pixels decoded here, the pixels the browser decoded), both (H, W, 3) uint8 RGB."""
    got = driver.execute_async_script(READ_IMAGE, element_id)
    assert "error" not in got, got
    png = base64.b64decode(got["png"])
    decoded = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    rgba = np.frombuffer(base64.b64decode(got["rgba"]), np.uint8).reshape(got["height"], got["width"], 4)
    assert (rgba[..., 3] == 255).all()
    return decoded, rgba[..., :3]


def test_the_page_relights_an_upload_in_a_real_browser(server, browser, harmonizer, tmp_path):
    fg, matte, bg = _portrait()
    paths = {"fg": _write(tmp_path / "portrait.png", fg),
             "matte": _write(tmp_path / "matte.png", (matte * 255).round().astype(np.uint8)),
             "bg": _write(tmp_path / "background.png", bg)}
    matte8 = cv2.imread(paths["matte"], cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255  # what the server reads

    browser.get(server + "/")
    assert browser.title == "relightful"
    state = _submit(browser, paths)
    assert state["status"] == f"done: {fg.shape[1]}x{fg.shape[0]}"

    result, shown = _read(browser, "result")
    assert result.shape == fg.shape  # the foreground's size
    expected = harmonizer(fg, matte8, bg, seed=0)  # the page sends seed 0 and no steps: the model's default
    np.testing.assert_array_equal(result, expected)
    np.testing.assert_array_equal(shown, expected)  # what the browser displays, pixel for pixel
    outside = matte8 == 0
    assert outside.mean() > 0.2
    np.testing.assert_array_equal(result[outside], cover_resize(bg, fg.shape[:2])[outside])

    pasted, pasted_shown = _read(browser, "paste")
    np.testing.assert_array_equal(pasted, paste(fg, matte8, bg))
    np.testing.assert_array_equal(pasted_shown, pasted)

    # Again without a matte: the server mattes the portrait (GrabCut here) for both the paste and the result.
    from relightful.augment.matting import compute_matte

    _submit(browser, {"matte": None})
    auto = compute_matte(fg, "grabcut")
    result, shown = _read(browser, "result")
    expected = harmonizer(fg, auto, bg, seed=0)
    np.testing.assert_array_equal(result, expected)
    np.testing.assert_array_equal(shown, expected)
    pasted, _ = _read(browser, "paste")
    np.testing.assert_array_equal(pasted, paste(fg, auto, bg))


def test_the_page_shows_the_reason_for_a_refused_upload(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    fg, matte, bg = _portrait()
    browser.get(server + "/")
    browser.find_element(By.ID, "fg").send_keys(_write(tmp_path / "portrait.png", fg))
    browser.find_element(By.ID, "matte").send_keys(_write(tmp_path / "matte.png", matte[:20, :20].astype(np.uint8)))
    browser.find_element(By.ID, "bg").send_keys(_write(tmp_path / "background.png", bg))
    browser.find_element(By.ID, "submit").click()
    status = browser.find_element(By.ID, "status")
    WebDriverWait(browser, 30, poll_frequency=0.1).until(lambda d: status.get_attribute("class") == "error")
    assert status.text.startswith("400: matte:") and "must have the same size" in status.text, status.text
    assert browser.find_element(By.ID, "submit").is_enabled()
