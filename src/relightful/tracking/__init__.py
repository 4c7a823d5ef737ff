"""MLflow: runs, registry, lineage, promotion, model resolution, and S3 transfers. The only library package that
imports mlflow (always lazily, inside functions, so the rest of the library and the CLI start without it).

Modules: `runs` (one run per job), `registry` (stage models as registered versions), `lineage` (data version and
git commit), `jobs` (what each job logs), `retrain` (retrain-or-not), `promotion` (the champion gate),
`model_uri` (`--model` resolution), `http` (how long MLflow's client may retry), `mlflow_model` (what a version's
MLflow model is logged with), `s3` (checksummed object transfers).

Nothing is imported here: the CLI imports `runs` and `http` for its error handling, and must not pull the registry
and the model code into every job (see tests/test_layout.py)."""
