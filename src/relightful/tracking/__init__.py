"""MLflow: runs, registry, model resolution. The only library package that imports mlflow (always lazily, inside
functions, so the rest of the library and the CLI start without it)."""

from relightful.tracking.models import default_tracking_uri, is_model_uri, resolve_model

__all__ = ["default_tracking_uri", "is_model_uri", "resolve_model"]
