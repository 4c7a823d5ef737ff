"""MLflow: runs, registry, lineage, promotion, model resolution, and S3 transfers. The only library package that
imports mlflow (always lazily, inside functions, so the rest of the library and the CLI start without it).

Modules: `runs` (one run per job), `registry` (stage models as registered versions), `lineage` (data version and
git commit), `jobs` (what each job logs), `retrain` (retrain-or-not), `promotion` (the champion gate),
`model_uri` (`--model` resolution), `s3` (checksummed object transfers)."""

from relightful.tracking.lineage import DataVersion, data_version, git_commit
from relightful.tracking.model_uri import default_tracking_uri, is_model_uri, resolve_model
from relightful.tracking.registry import RegisteredVersion, register_stage_model, stage_model_name
from relightful.tracking.runs import RunTracker, TrackingError

__all__ = ["DataVersion", "RegisteredVersion", "RunTracker", "TrackingError", "data_version", "default_tracking_uri",
           "git_commit", "is_model_uri", "register_stage_model", "resolve_model", "stage_model_name"]
