"""The file MLflow runs to load a registered relightful model ("models from code"): it names the class, and
`HarmonizerModel.load_context` reads the model folder's safetensors. Nothing is unpickled."""

from mlflow.models import set_model

from relightful.serving.pyfunc import HarmonizerModel

set_model(HarmonizerModel())
