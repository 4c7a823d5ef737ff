"""`relightful serve` (DESIGN 3.10): a web page and a JSON/multipart API around one loaded `Harmonizer`.

- `GET /`: the page (`page.py`): upload a portrait (matte optional) and a background, see paste | result.
- `POST /api/harmonize`: multipart `fg`, `bg`, optional `matte`, `seed`, `steps` -> `image/png`, the foreground's
  size. `POST /api/paste`: the same inputs composited unchanged (what the page shows beside the result).
- `GET /healthz`: the model is loaded and the queue's length.

Why it is built this way:
- The model is loaded once, when the app is made, and every inference runs on one worker thread: requests queue
  instead of running two inferences at once, each already using all of torch's threads.
- An upload over `max_upload_bytes` is refused with 413 from its `Content-Length` before it is read, or while it is
  read when the client sends none; an image over `max_pixels` is refused with 400 from its header, before decoding.
- Bad input is a 400 whose `detail` names the field and the reason (the `InputError` of the readers).
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from relightful.io import InputError, check_pixels, encode_png, read_ldr, read_matte, to_uint8
from relightful.models.compositing import paste
from relightful.serving.page import PAGE


@dataclass(frozen=True)
class ServeConfig:
    max_upload_bytes: int = 32 * 2**20  # one request, all its files together
    max_pixels: int = 40_000_000        # per image, read from its header (a 7,700×5,200 photo)
    matting: str = "segmenter"          # for a request without a matte (relightful.augment.matting)
    max_steps: int = 100                # a request cannot hold the worker for longer than this many sampler steps


class _TooLarge(Exception):
    pass


def _integer(form, key: str, default: int | None, low: int, high: int) -> int | None:
    text = form.get(key)
    if text in (None, ""):
        return default
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise InputError(key, f"must be an integer, got {str(text)[:40]!r}") from None
    if not low <= value <= high:
        raise InputError(key, f"must be in [{low}, {high}], got {value}")
    return value


class Inputs:
    """The decoded images of one request: fg and bg as uint8 RGB, the matte as float32 in [0, 1] (computed when the
    request has none), and the sampler settings."""

    def __init__(self, files: dict[str, bytes], form, config: ServeConfig):
        for key in ("fg", "bg"):
            if not files.get(key):
                raise InputError(key, "missing: send the foreground portrait as `fg` and the background as `bg`")
        for key, data in files.items():
            check_pixels(data, config.max_pixels, key)
        self.fg = to_uint8(read_ldr(files["fg"], "fg"))
        self.bg = to_uint8(read_ldr(files["bg"], "bg"))
        self.matte = read_matte(files["matte"], "matte") if files.get("matte") else None
        if self.matte is not None and self.matte.shape != self.fg.shape[:2]:
            raise InputError("matte", f"is {self.matte.shape[1]}x{self.matte.shape[0]} but the foreground is "
                                      f"{self.fg.shape[1]}x{self.fg.shape[0]}: they must have the same size")
        self.seed = _integer(form, "seed", 0, 0, 2**31 - 1)
        self.steps = _integer(form, "steps", None, 1, config.max_steps)
        self.matting = config.matting

    def matte_or_computed(self) -> np.ndarray:
        if self.matte is None:
            from relightful.augment.matting import MattingUnavailable, compute_matte

            try:
                self.matte = compute_matte(self.fg, self.matting)
            except MattingUnavailable as err:
                raise InputError("fg", f"no matte was sent and none can be computed here: {err}") from None
            except ValueError as err:  # no person found
                raise InputError("fg", f"no matte was sent and {err}") from None
        return self.matte


def create_app(harmonizer, config: ServeConfig = ServeConfig(), model_name: str = "model"):
    """The FastAPI app serving `harmonizer` (a loaded `relightful.models.Harmonizer`)."""
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="harmonize")

    @asynccontextmanager
    async def lifespan(_app):
        yield
        worker.shutdown(wait=False)

    app = FastAPI(title="relightful", description="Relight a portrait to match a new background (DESIGN 3.10).",
                  lifespan=lifespan)
    waiting = {"requests": 0}
    lock = threading.Lock()

    async def read_request(request: Request) -> tuple[dict[str, bytes], object]:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > config.max_upload_bytes:
            raise _TooLarge()
        form = await request.form(max_part_size=config.max_upload_bytes)
        files, total = {}, 0
        for key in ("fg", "bg", "matte"):
            upload = form.get(key)
            if upload is None or isinstance(upload, str):
                continue
            data = await upload.read(config.max_upload_bytes + 1 - total)
            total += len(data)
            if total > config.max_upload_bytes:
                raise _TooLarge()
            files[key] = data
        return files, form

    async def run(request: Request, job) -> Response:
        """Read and check the request here, run `job(inputs)` -> uint8 image on the worker, answer PNG or 4xx."""
        try:
            files, form = await read_request(request)
            inputs = Inputs(files, form, config)
            with lock:
                waiting["requests"] += 1
            try:
                image = await asyncio.get_running_loop().run_in_executor(worker, job, inputs)
            finally:
                with lock:
                    waiting["requests"] -= 1
        except _TooLarge:
            return JSONResponse({"detail": f"upload over the limit of {config.max_upload_bytes} bytes"}, 413)
        except InputError as err:
            return JSONResponse({"detail": str(err)}, 400)
        return Response(encode_png(image), media_type="image/png")

    def harmonize(inputs: Inputs) -> np.ndarray:
        return harmonizer(inputs.fg, inputs.matte_or_computed(), inputs.bg, steps=inputs.steps, seed=inputs.seed)

    def composite(inputs: Inputs) -> np.ndarray:
        return paste(inputs.fg, inputs.matte_or_computed(), inputs.bg)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok", "model": model_name, "waiting": waiting["requests"]}

    @app.post("/api/harmonize", responses={200: {"content": {"image/png": {}}}})
    async def api_harmonize(request: Request) -> Response:
        """multipart `fg`, `bg`, optional `matte`, `seed`, `steps` -> the relit composite, `image/png`."""
        return await run(request, harmonize)

    @app.post("/api/paste", responses={200: {"content": {"image/png": {}}}})
    async def api_paste(request: Request) -> Response:
        """The same inputs composited unchanged: what the result is compared with."""
        return await run(request, composite)

    return app


__all__ = ["Inputs", "ServeConfig", "create_app"]
