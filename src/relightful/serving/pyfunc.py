"""`HarmonizerModel`: `Harmonizer` behind MLflow's pyfunc interface, the class a registered version loads
(`mlflow_entry.py`; the signature and input example are in `relightful.tracking.mlflow_model`).

Why it is built this way:
- Bad input raises `MlflowException(INVALID_PARAMETER_VALUE)` naming the row, the column and the reason, which
  MLflow's scoring server answers with a 400.
- A request without a matte gets the person segmenter's, as `relightful serve` does.
- One inference at a time per process (a lock): each already uses all of torch's threads, so two at once only
  slow both down; concurrent requests queue.
"""

from __future__ import annotations

import base64
import binascii
import os
import threading

import numpy as np

from relightful.tracking.mlflow_model import MODEL_ARTIFACT_KEY, encode_image

MAX_PIXELS = 40_000_000       # per image, read from its header before decoding (as `relightful serve`)
MAX_STEPS = 100               # a request cannot hold the worker for longer than this many sampler steps
DEVICE_ENV = "RELIGHTFUL_DEVICE"  # torch device of the served model: "auto" (CUDA when there is one), "cpu", ...


def _bad(row: int, column: str, reason: str):
    from mlflow.exceptions import INVALID_PARAMETER_VALUE, MlflowException

    return MlflowException(f"row {row}, column {column!r}: {reason}", error_code=INVALID_PARAMETER_VALUE)


def _present(value) -> bool:
    """A cell holds a value: not None, NaN or an empty string (optional columns of a frame may hold any)."""
    if value is None or (isinstance(value, str) and not value):
        return False
    try:
        return not bool(np.isnan(value))
    except TypeError:
        return True


def _decode(text, row: int, column: str, matte: bool = False):
    """A cell's base64 image -> uint8 RGB (or a float matte), every failure named by row and column."""
    from relightful.io import InputError, check_pixels, read_ldr, read_matte, to_uint8

    if not isinstance(text, str):
        raise _bad(row, column, f"expected base64 text, got {type(text).__name__}")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise _bad(row, column, "not valid base64") from None
    try:
        check_pixels(data, MAX_PIXELS, column)
        return read_matte(data, column) if matte else to_uint8(read_ldr(data, column))
    except InputError as err:
        raise _bad(row, column, err.reason) from None


def _integer(value, row: int, column: str, default: int | None, low: int, high: int) -> int | None:
    if not _present(value):
        return default
    if isinstance(value, float) and not value.is_integer() or isinstance(value, (str, bytes, bool)):
        raise _bad(row, column, f"must be an integer, got {value!r}")
    number = int(value)
    if not low <= number <= high:
        raise _bad(row, column, f"must be in [{low}, {high}], got {number}")
    return number


def _auto_matte(fg: np.ndarray, row: int) -> np.ndarray:
    """The matte of a request sent without one, by the person segmenter (as `relightful serve` does)."""
    from relightful.augment.matting import MattingUnavailable, compute_matte

    try:
        return compute_matte(fg, "segmenter")
    except MattingUnavailable as err:
        raise _bad(row, "matte", f"none was sent and none can be computed here: {err}") from None
    except ValueError as err:  # no person found
        raise _bad(row, "matte", f"none was sent and {err}") from None


try:
    from mlflow.pyfunc import PythonModel as _PythonModel
except ImportError:  # serving without MLflow: the class is only needed by MLflow itself
    _PythonModel = object


class HarmonizerModel(_PythonModel):
    """`Harmonizer` behind MLflow's pyfunc interface: a frame of requests in, a frame of base64 PNGs out."""

    def load_context(self, context) -> None:
        from relightful.models.harmonizer import Harmonizer
        from relightful.tracking.model_uri import resolve_model

        folder = resolve_model(context.artifacts[MODEL_ARTIFACT_KEY])
        self.harmonizer = Harmonizer.from_pretrained(folder, device=os.environ.get(DEVICE_ENV, "auto"))
        self._lock = threading.Lock()

    def predict(self, context, model_input, params=None):
        import pandas as pd

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        for column in ("fg", "bg"):
            if column not in frame.columns:
                raise _bad(0, column, "missing: send the foreground portrait as `fg` and the background as `bg`")
        images = []
        for row, record in enumerate(frame.to_dict("records")):
            fg, bg = _decode(record["fg"], row, "fg"), _decode(record["bg"], row, "bg")
            matte = (_decode(record["matte"], row, "matte", matte=True) if _present(record.get("matte"))
                     else _auto_matte(fg, row))
            if matte.shape != fg.shape[:2]:
                raise _bad(row, "matte", f"is {matte.shape[1]}x{matte.shape[0]} but the foreground is "
                                         f"{fg.shape[1]}x{fg.shape[0]}: they must have the same size")
            seed = _integer(record.get("seed"), row, "seed", 0, 0, 2**31 - 1)
            steps = _integer(record.get("steps"), row, "steps", None, 1, MAX_STEPS)
            with self._lock:
                images.append(encode_image(self.harmonizer(fg, matte, bg, steps=steps, seed=seed)))
        return pd.DataFrame({"image": images})


__all__ = ["DEVICE_ENV", "HarmonizerModel", "MAX_PIXELS", "MAX_STEPS"]
