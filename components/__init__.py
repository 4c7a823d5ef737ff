"""Kubeflow Pipelines (kfp v2) components: one thin component per `relightful` job.

Each component runs the project image, turns its artifacts into paths and the pipeline's parameters into the job's
`params.yaml`, and calls the library through the same command line `dvc repro` runs (`components.job.run_job`), so
a step does the same work under DVC and under Kubeflow. Nothing here knows about DVC; `pipelines/` wires these.
"""
