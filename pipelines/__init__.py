"""The Kubeflow pipeline of the workflow: the DAG (`relightful_pipeline`), its compiled YAML, a local runner and
the recurring-run (scheduled retraining) entry point. Depends only on `components/`."""
