# CUDA image: ghcr.io/relightful/relightful:0.1.0-cuda
#   docker build -f docker/cuda.Dockerfile -t ghcr.io/relightful/relightful:0.1.0-cuda --build-arg GIT_COMMIT="$(git rev-parse HEAD)" .
# Runs the training PyTorchJob (torchrun + DeepSpeed, nccl) and GPU pipeline steps.
# torch 2.13's only CUDA 12 build is cu126, so the toolkit that compiles DeepSpeed's ops is 12.6 as well
# (DeepSpeed refuses to build against a toolkit whose CUDA version differs from torch's).
# Base images are build arguments (the defaults are what users build on): a devel image with nvcc for the build stage,
# the matching runtime image for the final one; both Ubuntu 22.04 (python3.11 from its archive).
ARG BUILD_IMAGE=nvidia/cuda:12.6.3-devel-ubuntu22.04
ARG BASE_IMAGE=nvidia/cuda:12.6.3-runtime-ubuntu22.04

# --- build: python venv with torch, DeepSpeed (ops compiled for A100 and H100) and the package ----------------------
FROM ${BUILD_IMAGE} AS build

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:${PATH}
# Ubuntu 22.04 ships python3.11 beside its default 3.10; versions come with the pinned base image's release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-dev python3.11-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv

COPY constraints.txt /tmp/build/constraints.txt
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cu126 torch==2.13.0

# Precompile DeepSpeed's GPU ops: the runtime image has no nvcc to JIT-compile them. 8.0: A100, 9.0: H100.
# CPU Adam is left out: it compiles with -march=native of the build host and would only serve ZeRO-Offload.
# --no-build-isolation: the ops are built against the torch installed above.
ENV TORCH_CUDA_ARCH_LIST="8.0;9.0" \
    DS_BUILD_FUSED_ADAM=1 \
    DS_BUILD_UTILS=1
RUN pip install --no-cache-dir ninja==1.13.2 packaging==26.4 setuptools==84.2.1 wheel==0.48.0 \
    && pip install --no-cache-dir --no-build-isolation -c /tmp/build/constraints.txt deepspeed==0.19.8

COPY pyproject.toml README.md /tmp/build/
COPY src /tmp/build/src
RUN pip install --no-cache-dir -c /tmp/build/constraints.txt '/tmp/build[train,mlops,starter,serve]' \
    && RELIGHTFUL_WEIGHTS=/opt/weights /opt/venv/bin/relightful fetch-weights --isnet

# --- runtime: CUDA runtime libraries, python3.11 and the venv ----------------------------------------------------
FROM ${BASE_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    PYTHONPATH=/opt/relightful \
    PATH=/opt/venv/bin:${PATH}

# The venv's python is a link to /usr/bin/python3.11: the same package as in the build stage. git: for DVC.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 git \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 1000 --user-group --create-home --shell /usr/sbin/nologin relightful \
    && install -d -o 1000 -g 1000 /workspace

COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/weights /opt/relightful/weights
ENV RELIGHTFUL_WEIGHTS=/opt/relightful/weights
COPY components /opt/relightful/components
COPY pipelines /opt/relightful/pipelines
COPY params.yaml dvc.yaml /opt/relightful/

# The build context has no .git: training tags model versions with this commit. Last, so a new commit rebuilds nothing.
ARG GIT_COMMIT=unknown
ENV GIT_COMMIT=${GIT_COMMIT}

USER 1000:1000
WORKDIR /workspace
# Reset nvidia's banner entry point: `docker run IMAGE relightful train ...` runs the command as given.
ENTRYPOINT []
CMD ["relightful", "--help"]
