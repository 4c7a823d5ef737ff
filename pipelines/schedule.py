"""Scheduled retraining as a Kubeflow recurring run, and one-off runs, through the KFP API:

    python -m pipelines.schedule --host $KFP_HOST recurring --cron "0 0 3 * * 1"   # Mondays 03:00 UTC
    python -m pipelines.schedule --host $KFP_HOST --profile gpu run

`recurring` is idempotent: a recurring run of the same name is replaced, not duplicated, so the schedule can be
re-applied from CI or a Kubernetes Job. Each scheduled run is the whole pipeline; promotion keeps the champion
unless the new model beats it. The cron expression has six fields, seconds first (KFP's format). The package is
the committed `pipelines/relightful_pipeline.yaml`; `--profile` sends another profile of params.yaml as `params`.
k8s/base/schedule-job.yaml applies the schedule from inside the cluster.
"""

import argparse
import os
import sys
from pathlib import Path

from pipelines.compile import COMPILED
from pipelines.relightful_pipeline import PARAMS_YAML, profile_params

EXPERIMENT = "relightful"
RECURRING_NAME = "relightful-retrain"


def run_arguments(profile: "str | None", params_path: Path = PARAMS_YAML) -> dict:
    """The pipeline arguments for a profile of params.yaml; none (the compiled defaults) without one."""
    if profile is None:
        return {}
    name, params = profile_params(profile, params_path)
    return {"profile": name, "params": params}


def check_cron(cron: str) -> str:
    fields = cron.split()
    if len(fields) != 6:
        raise ValueError(f"cron expression {cron!r} has {len(fields)} fields; KFP wants 6 (seconds first), "
                         f"e.g. '0 0 3 * * 1' for Mondays at 03:00")
    return cron


def schedule_retraining(client, cron: str, arguments: dict, package: Path = COMPILED,
                        experiment: str = EXPERIMENT, name: str = RECURRING_NAME,
                        service_account: "str | None" = None) -> str:
    """Create (or replace) the recurring run `name`; returns its id. At most one run at a time, and no catch-up
    runs for the periods the schedule was paused."""
    check_cron(cron)
    exp = client.create_experiment(experiment)  # returns the existing one of that name
    listed = client.list_recurring_runs(experiment_id=exp.experiment_id, page_size=100)
    for old in listed.recurring_runs or []:
        if old.display_name == name:
            client.delete_recurring_run(old.recurring_run_id)
    created = client.create_recurring_run(
        experiment_id=exp.experiment_id, job_name=name, description="relightful: scheduled retraining",
        cron_expression=cron, max_concurrency=1, no_catchup=True, params=arguments,
        pipeline_package_path=str(package), enabled=True, service_account=service_account)
    return created.recurring_run_id


def run_once(client, arguments: dict, package: Path = COMPILED, experiment: str = EXPERIMENT,
             service_account: "str | None" = None) -> str:
    """Start one run of the pipeline now; returns its id."""
    result = client.create_run_from_pipeline_package(str(package), arguments=arguments, experiment_name=experiment,
                                                     service_account=service_account)
    return result.run_id


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m pipelines.schedule", description=__doc__.splitlines()[0])
    ap.add_argument("--host", default=os.environ.get("KFP_HOST"),
                    help="the KFP API, e.g. http://ml-pipeline.kubeflow.svc.cluster.local:8888 (default: $KFP_HOST)")
    ap.add_argument("--package", type=Path, default=COMPILED, help="compiled pipeline YAML")
    ap.add_argument("--profile", default=None, help="send this profile of params.yaml (default: the compiled one)")
    ap.add_argument("--experiment", default=EXPERIMENT)
    ap.add_argument("--service-account", default=None, help="the runs' Kubernetes service account")
    sub = ap.add_subparsers(dest="what", required=True)
    rec = sub.add_parser("recurring", help="create or replace the recurring retraining run")
    rec.add_argument("--cron", default="0 0 3 * * 1", help="six fields, seconds first (default: Mondays 03:00)")
    rec.add_argument("--name", default=RECURRING_NAME)
    sub.add_parser("run", help="start one run now")
    return ap


def main(argv: "list[str] | None" = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if not args.host:
        ap.error("no KFP API: give --host or set KFP_HOST")

    from kfp import Client

    client = Client(host=args.host)
    arguments = run_arguments(args.profile)
    try:
        if args.what == "recurring":
            rid = schedule_retraining(client, args.cron, arguments, args.package, args.experiment, args.name,
                                      args.service_account)
            print(f"recurring run {args.name} ({rid}): {args.cron}")
        else:
            print(f"run {run_once(client, arguments, args.package, args.experiment, args.service_account)} started")
    except ValueError as err:
        print(f"schedule: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
