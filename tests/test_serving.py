"""`relightful serve`'s app (relightful.serving): the page, the multipart API and its refusals, on a micro model.

The pixels the API returns are the `Harmonizer`'s own for the same inputs and seed; a bad image is a 400 that names
the field; an upload over the limit a 413; requests sent at once all succeed, one inference at a time.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest

from relightful.models.compositing import paste
from relightful.models.harmonizer import Harmonizer
from relightful.serving import ServeConfig, create_app
from relightful.io import encode_png



@pytest.fixture(scope="module")
def harmonizer(micro_harmonizer) -> Harmonizer:
    return micro_harmonizer


def _images(height: int = 48, width: int = 40, seed: int = 0):
    rng = np.random.default_rng(seed)
    fg = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    bg = rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:height, :width]
    matte = ((yy - height / 2) ** 2 / (0.4 * height) ** 2 + (xx - width / 2) ** 2 / (0.4 * width) ** 2 <= 1)
    return fg, matte.astype(np.float32), bg


def _png_grey(matte: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", (matte * 255).round().astype(np.uint8))
    assert ok
    return buf.tobytes()


def _decode(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]


@pytest.fixture(scope="module")
def client(harmonizer):
    from fastapi.testclient import TestClient

    app = create_app(harmonizer, ServeConfig(max_upload_bytes=200_000, max_pixels=1_000_000, matting="grabcut"),
                     model_name="micro")
    with TestClient(app) as c:
        yield c


def test_page_and_health(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'name="fg"' in page.text and 'name="bg"' in page.text and "/api/harmonize" in page.text
    health = client.get("/healthz")
    assert health.status_code == 200 and health.json() == {"status": "ok", "model": "micro", "waiting": 0}


def test_harmonize_returns_the_harmonizers_pixels(client, harmonizer):
    fg, matte, bg = _images()
    files = {"fg": ("fg.png", encode_png(fg), "image/png"), "bg": ("bg.png", encode_png(bg), "image/png"),
             "matte": ("matte.png", _png_grey(matte), "image/png")}
    response = client.post("/api/harmonize", files=files, data={"seed": "3", "steps": "2"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    out = _decode(response.content)
    expected = harmonizer(fg, matte, bg, steps=2, seed=3)
    assert out.shape == fg.shape
    np.testing.assert_array_equal(out, expected)
    pasted = _decode(client.post("/api/paste", files=files).content)
    np.testing.assert_array_equal(pasted, paste(fg, matte, bg))
    outside = matte == 0
    np.testing.assert_array_equal(out[outside], pasted[outside])  # the background is the uploaded one, unchanged


@pytest.mark.parametrize("field, payload, reason", [
    ("fg", b"not an image", "cannot decode"),
    ("bg", b"", "missing"),
    ("matte", None, "must have the same size"),
])
def test_bad_input_is_a_400_naming_the_field(client, field, payload, reason):
    fg, matte, bg = _images()
    files = {"fg": ("fg.png", encode_png(fg), "image/png"), "bg": ("bg.png", encode_png(bg), "image/png"),
             "matte": ("matte.png", _png_grey(matte), "image/png")}
    if payload is None:  # a matte of another size
        files["matte"] = ("matte.png", _png_grey(matte[:20, :20]), "image/png")
    else:
        files[field] = (f"{field}.png", payload, "image/png")
    response = client.post("/api/harmonize", files=files)
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert detail.startswith(f"{field}:") and reason in detail, detail


def test_bad_settings_and_oversized_images_are_refused(client):
    fg, matte, bg = _images()
    files = {"fg": ("fg.png", encode_png(fg), "image/png"), "bg": ("bg.png", encode_png(bg), "image/png"),
             "matte": ("matte.png", _png_grey(matte), "image/png")}
    response = client.post("/api/harmonize", files=files, data={"steps": "lots"})
    assert response.status_code == 400 and response.json()["detail"].startswith("steps:")
    response = client.post("/api/harmonize", files=files, data={"steps": "100000"})
    assert response.status_code == 400 and "must be in" in response.json()["detail"]
    # 1,100 × 1,000 of one colour: a small PNG, over the 1 MP limit, refused from its header
    big = np.full((1000, 1100, 3), 128, np.uint8)
    files["bg"] = ("bg.png", encode_png(big), "image/png")
    response = client.post("/api/harmonize", files=files)
    assert response.status_code == 400 and "over the limit" in response.json()["detail"]


def test_an_upload_over_the_limit_is_a_413(client):
    fg, matte, bg = _images()
    noise = np.random.default_rng(1).integers(0, 256, (300, 300, 3), dtype=np.uint8)  # ~270 KB as PNG
    files = {"fg": ("fg.png", encode_png(fg), "image/png"), "bg": ("bg.png", encode_png(noise), "image/png")}
    response = client.post("/api/harmonize", files=files)
    assert response.status_code == 413 and "over the limit" in response.json()["detail"]


def test_without_a_matte_the_portrait_is_matted(client, harmonizer):
    """The app's matting method (GrabCut here: it needs no weights) makes the matte the request did not send."""
    from relightful.augment.matting import compute_matte

    fg, _, bg = _images(64, 64)
    files = {"fg": ("fg.png", encode_png(fg), "image/png"), "bg": ("bg.png", encode_png(bg), "image/png")}
    response = client.post("/api/harmonize", files=files, data={"steps": "1"})
    assert response.status_code == 200, response.text
    expected = harmonizer(fg, compute_matte(fg, "grabcut"), bg, steps=1, seed=0)
    np.testing.assert_array_equal(_decode(response.content), expected)


def test_concurrent_requests_all_succeed_one_inference_at_a_time(harmonizer):
    from fastapi.testclient import TestClient

    running, most = [0], [0]
    lock = threading.Lock()

    def counting(*args, **kwargs):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            return harmonizer(*args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    fg, matte, bg = _images()
    files = {"fg": ("fg.png", encode_png(fg), "image/png"), "bg": ("bg.png", encode_png(bg), "image/png"),
             "matte": ("matte.png", _png_grey(matte), "image/png")}
    with TestClient(create_app(counting)) as c:
        with ThreadPoolExecutor(4) as pool:
            responses = list(pool.map(lambda seed: c.post("/api/harmonize", files=files,
                                                          data={"seed": str(seed), "steps": "1"}), range(16)))
    assert [r.status_code for r in responses] == [200] * 16
    assert most[0] == 1
    outputs = {_decode(r.content).tobytes() for r in responses}
    assert len(outputs) > 1  # different seeds, different samples


def test_relightful_serve_answers_on_a_real_socket(harmonizer, tmp_path):
    """`relightful serve` as a user starts it: uvicorn on 127.0.0.1, the model loaded once, then stopped."""
    import os
    import socket
    import subprocess
    import sys
    import time

    import requests

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    folder = tmp_path / "model"
    harmonizer.model.save_pretrained(folder)
    server = subprocess.Popen([sys.executable, "-m", "relightful", "serve", "--model", str(folder), "--port", str(port),
                               "--matting", "grabcut"], env={**os.environ, "RELIGHTFUL_TRACKING": "0"},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert server.poll() is None, server.stdout.read().decode()
            assert time.monotonic() < deadline, "the server did not come up in 60 s"
            time.sleep(0.3)
        fg, matte, bg = _images()
        files = {"fg": ("fg.png", encode_png(fg), "image/png"), "bg": ("bg.png", encode_png(bg), "image/png"),
                 "matte": ("matte.png", _png_grey(matte), "image/png")}
        response = requests.post(f"{url}/api/harmonize", files=files, data={"steps": "1"}, timeout=60)
        assert response.status_code == 200, response.text
        np.testing.assert_array_equal(_decode(response.content), harmonizer(fg, matte, bg, steps=1, seed=0))
        assert requests.post(f"{url}/api/harmonize", files={"fg": files["fg"]}, timeout=60).status_code == 400
    finally:
        server.terminate()
        server.wait(timeout=30)
