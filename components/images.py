"""The images the components run in (built from docker/; see docs/cluster.md). Override when compiling for your own
registry: RELIGHTFUL_IMAGE (CPU steps) and RELIGHTFUL_CUDA_IMAGE (training and GPU inference steps)."""

import os

CPU_IMAGE = os.environ.get("RELIGHTFUL_IMAGE", "ghcr.io/relightful/relightful:0.1.0-cpu")
CUDA_IMAGE = os.environ.get("RELIGHTFUL_CUDA_IMAGE", "ghcr.io/relightful/relightful:0.1.0-cuda")


def project_component(image: str):
    """`dsl.component` for a function run in one of these images: they carry kfp (pinned with the rest), so a step
    starts without installing anything (a cluster's pods need no package index)."""
    from kfp import dsl

    return dsl.component(base_image=image, install_kfp_package=False)
