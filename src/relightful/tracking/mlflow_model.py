"""What the registry logs with each version's MLflow model (DESIGN 3.10): the signature of its frames, an input
example, and the code file MLflow runs to load it (`relightful/serving/mlflow_entry.py`, which builds
`relightful.serving.pyfunc.HarmonizerModel`).

Request: columns `fg`, `bg` (base64 PNG/JPEG), optional `matte` (base64 PNG), `seed`, `steps`; response: one column
`image`, a base64 PNG of the foreground's size. The model is logged *from code*, not as a cloudpickled object, so
loading a registered version never unpickles anything: the weights stay safetensors in the model folder, which
MLflow carries as the artifact `model`.
"""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np

MODEL_ARTIFACT_KEY = "model"  # the key of the model folder in the MLflow model's artifacts
ENTRY_FILE = Path(__file__).resolve().parents[1] / "serving" / "mlflow_entry.py"


def signature():
    """The frame's columns and types (DESIGN 3.10). `seed` and `steps` are integers: leave the column out to use
    the defaults (seed 0, the model's steps); within one frame give them for every row or for none, since MLflow
    refuses an integer column with holes."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    inputs = Schema([ColSpec("string", "fg"), ColSpec("string", "bg"), ColSpec("string", "matte", required=False),
                     ColSpec("long", "seed", required=False), ColSpec("long", "steps", required=False)])
    return ModelSignature(inputs=inputs, outputs=Schema([ColSpec("string", "image")]))


def encode_image(image8: np.ndarray) -> str:
    """(H, W, 3) uint8 RGB or (H, W) uint8 grey -> base64 PNG text (a cell of the frames)."""
    from relightful.io import encode_png

    return base64.b64encode(encode_png(image8)).decode("ascii")


def input_example():
    """A one-row request small enough to store beside the model: a 12×10 portrait with its matte, a 16×16 sky."""
    import pandas as pd

    yy, xx = np.mgrid[:12, :10]
    fg = np.stack([40 + 10 * yy, 90 + 8 * xx, np.full_like(yy, 120)], axis=-1).astype(np.uint8)
    matte = (((yy - 6) / 5.0) ** 2 + ((xx - 5) / 4.0) ** 2 <= 1).astype(np.uint8) * 255
    bg = np.zeros((16, 16, 3), np.uint8) + np.array([70, 110, 190], np.uint8)
    return pd.DataFrame({"fg": [encode_image(fg)], "bg": [encode_image(bg)], "matte": [encode_image(matte)],
                         "seed": [0], "steps": [2]})


__all__ = ["ENTRY_FILE", "MODEL_ARTIFACT_KEY", "encode_image", "input_example", "signature"]
