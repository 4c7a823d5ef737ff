"""A registered version is an MLflow model (DESIGN 3.10): loaded by alias with `mlflow.pyfunc`, served by the real
`mlflow models serve` on 127.0.0.1; its pixels are the `Harmonizer`'s own for the same inputs and seed."""

from __future__ import annotations

import base64
import json
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from relightful.models import RelightModel
from relightful.models.harmonizer import Harmonizer
from relightful.models.model_card import CardFacts, write_model_card
from relightful.tracking.mlflow_model import encode_image

from conftest import micro_model_config
from services import clean_env, free_port, serve

mlflow = pytest.importorskip("mlflow")

BIN = Path(sys.executable).parent
CHAMPION = "models:/relightful-stage3@champion"


def _decode(text: str) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(base64.b64decode(text), np.uint8), cv2.IMREAD_UNCHANGED)[..., ::-1]


def _request(seed: int, height: int = 40, width: int = 36, with_matte: bool = True) -> dict:
    rng = np.random.default_rng(seed)
    fg = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    bg = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:height, :width]
    matte = ((((yy - height / 2) / (0.4 * height)) ** 2 + ((xx - width / 2) / (0.4 * width)) ** 2) <= 1)
    row = {"fg": encode_image(fg), "bg": encode_image(bg), "seed": seed, "steps": 2,
           "arrays": (fg, matte.astype(np.float32), bg)}
    if with_matte:
        row["matte"] = encode_image(matte.astype(np.uint8) * 255)
    return row


def _frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([{k: v for k, v in row.items() if k != "arrays"} for row in rows])


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A sqlite store with a micro model (and its card) registered as relightful-stage3, alias champion."""
    from relightful.tracking.registry import register_stage_model
    from relightful.tracking.runs import RunTracker, make_client

    root = tmp_path_factory.mktemp("pyfunc")
    torch.manual_seed(0)
    folder = root / "stage3"
    RelightModel(micro_model_config(32)).save_pretrained(folder)
    write_model_card(folder, CardFacts(3, "micro", "data/pairs", "abc.dir", "models/stage2",
                                       [{"step": 4, "loss": 0.5}]))
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with RunTracker.start("train-stage3", uri=uri) as run:
        version = register_stage_model(3, folder, run, {"data_version": "abc.dir"})
    make_client(uri).set_registered_model_alias("relightful-stage3", "champion", version.version)
    return {"uri": uri, "folder": folder, "root": root, "version": version}


def test_registered_version_is_a_pyfunc_model_loaded_by_alias(registry, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry["uri"])
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    local = Path(mlflow.artifacts.download_artifacts(CHAMPION, dst_path=str(registry["root"] / "download")))
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    assert mlmodel["flavors"]["python_function"]["loader_module"] == "mlflow.pyfunc.loaders.code_model"  # from code
    inputs = json.loads(mlmodel["signature"]["inputs"])
    assert [(c["name"], c["type"], c.get("required", True)) for c in inputs] == [
        ("fg", "string", True), ("bg", "string", True), ("matte", "string", False), ("seed", "long", False),
        ("steps", "long", False)]
    assert json.loads(mlmodel["signature"]["outputs"]) == [{"type": "string", "name": "image", "required": True}]
    assert (local / mlmodel["saved_input_example_info"]["artifact_path"]).is_file()
    # logged from code: the weights are the folder's safetensors, and nothing in the MLflow model is a pickle
    assert not [p for p in local.rglob("*") if p.suffix in (".pkl", ".pickle", ".cloudpickle")]
    weights = sorted(p.relative_to(local).as_posix() for p in local.rglob("*.safetensors"))
    assert weights and all(w.startswith("artifacts/stage3/") for w in weights)

    model = mlflow.pyfunc.load_model(CHAMPION)
    rows = [_request(3), _request(11, 33, 48)]
    out = model.predict(_frame(rows))
    assert list(out.columns) == ["image"] and len(out) == 2
    reference = Harmonizer.from_pretrained(registry["folder"])
    for row, image in zip(rows, out["image"]):
        fg, matte, bg = row["arrays"]
        expected = reference(fg, matte, bg, steps=2, seed=row["seed"])
        got = _decode(image)
        assert got.shape == fg.shape and np.array_equal(got, expected)
    # seed and steps are optional columns: seed 0 and the model folder's steps
    fg, matte, bg = rows[1]["arrays"]
    bare = model.predict(_frame([rows[1]]).drop(columns=["seed", "steps"]))
    assert np.array_equal(_decode(bare["image"][0]), reference(fg, matte, bg, seed=0))

    # the version's description is the model card's opening
    version = mlflow.MlflowClient(registry["uri"]).get_model_version("relightful-stage3", registry["version"].version)
    assert version.description.startswith("# relightful stage 3") and "data version `abc.dir`" in version.description


@pytest.mark.parametrize("change, message", [
    ({"bg": "not base64!"}, "row 0, column 'bg': not valid base64"),
    ({"fg": base64.b64encode(b"GIF89a not really").decode()}, "row 0, column 'fg': cannot decode image"),
    ({"matte": encode_image(np.zeros((5, 5), np.uint8))}, "row 0, column 'matte': is 5x5 but the foreground is 36x40"),
    ({"steps": 1000}, r"row 0, column 'steps': must be in \[1, 100\], got 1000"),
    ({"seed": -1}, r"row 0, column 'seed': must be in \[0, 2147483647\], got -1"),
])
def test_bad_requests_name_the_row_column_and_reason(registry, monkeypatch, change, message):
    from mlflow.exceptions import MlflowException

    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry["uri"])
    model = mlflow.pyfunc.load_model(CHAMPION)
    row = {**_request(1), **change}
    with pytest.raises(MlflowException, match=message):
        model.predict(_frame([row]))


def _post(url: str, frame: pd.DataFrame) -> tuple[int, dict]:
    body = json.dumps({"dataframe_split": frame.to_dict(orient="split")}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_mlflow_models_serve_answers_invocations(registry):
    """The real scoring server (`mlflow models serve --env-manager local`, as k8s/serving runs it) on the champion:
    its probe routes, the documented JSON,
    a 400 naming a bad image, and 16 requests sent 4 at a time all answered with the same pixels."""
    port = free_port()
    env = clean_env(MLFLOW_TRACKING_URI=registry["uri"], PATH=f"{BIN}:{clean_env()['PATH']}",
                    MLFLOW_DISABLE_TELEMETRY="true")
    cmd = [str(BIN / "mlflow"), "models", "serve", "-m", CHAMPION, "--env-manager", "local", "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1"]
    url = f"http://127.0.0.1:{port}"
    with serve(cmd, env, registry["root"] / "serve.log", f"{url}/ping", timeout=120):
        # the routes the InferenceService's probes ask (k8s/serving)
        for path in ("/ping", "/health"):
            with urllib.request.urlopen(f"{url}{path}", timeout=10) as response:
                assert response.status == 200
        row = _request(5)
        status, answer = _post(f"{url}/invocations", _frame([row]))
        assert status == 200, answer
        fg, matte, bg = row["arrays"]
        expected = Harmonizer.from_pretrained(registry["folder"])(fg, matte, bg, steps=2, seed=5)
        (prediction,) = answer["predictions"]
        assert set(prediction) == {"image"} and np.array_equal(_decode(prediction["image"]), expected)

        status, answer = _post(f"{url}/invocations", _frame([{**row, "bg": base64.b64encode(b"junk").decode()}]))
        assert status == 400 and "column 'bg': cannot decode image" in answer["message"]

        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda _: _post(f"{url}/invocations", _frame([row])), range(16)))
        assert [status for status, _ in results] == [200] * 16
        assert all(np.array_equal(_decode(a["predictions"][0]["image"]), expected) for _, a in results)
