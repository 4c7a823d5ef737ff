"""The images the components run in (built from docker/; see the README). Override when compiling for your own
registry: RELIGHTFUL_IMAGE (CPU steps) and RELIGHTFUL_CUDA_IMAGE (training and GPU inference steps)."""

import os

CPU_IMAGE = os.environ.get("RELIGHTFUL_IMAGE", "ghcr.io/relightful/relightful:0.1.0-cpu")
CUDA_IMAGE = os.environ.get("RELIGHTFUL_CUDA_IMAGE", "ghcr.io/relightful/relightful:0.1.0-cuda")
