# CPU image: ghcr.io/relightful/relightful:0.1.0-cpu
#   docker build -f docker/cpu.Dockerfile -t ghcr.io/relightful/relightful:0.1.0-cpu --build-arg GIT_COMMIT="$(git rev-parse HEAD)" .
# Without Docker or registry access: docker/build-local.sh (podman, a Debian bookworm base made by debootstrap).
# Runs every pipeline step that needs no GPU, the MLflow server and the schedule Job.
# The starter set's real maps come from three packages (DESIGN 5; relightful.data.starter_data). They are fetched here,
# at build time, into the cache the job reads, so that a pod runs `relightful starter-data` with no package index.
#
# Base images are build arguments; the defaults are what users build on. BASE_IMAGE must be Debian bookworm (or a
# derivative) with Python 3.11 and its venv module: docker/build-local.sh passes one made by debootstrap.
ARG BASE_IMAGE=python:3.11.14-slim-bookworm
ARG NODE_IMAGE=node:22.12.0-bookworm-slim

FROM ${NODE_IMAGE} AS starter-npm
WORKDIR /cache
RUN npm pack @pmndrs/assets@1.7.0 --silent

FROM ${BASE_IMAGE} AS starter-deb
WORKDIR /cache
RUN apt-get update && apt-get download blender-data && rm -rf /var/lib/apt/lists/*

# The open3d-cpu wheel, only downloaded (its skyboxes are read from the zip), pinned as starter_data pins it: version,
# platform, Python and sha256. pip comes from a throw-away venv: Debian's python3 has none.
FROM ${BASE_IMAGE} AS starter-pypi
WORKDIR /cache
RUN python3 -m venv /tmp/pip \
    && /tmp/pip/bin/pip download --no-cache-dir --disable-pip-version-check open3d-cpu==0.20.0 --no-deps \
       --only-binary=:all: --platform manylinux_2_35_x86_64 --python-version 3.11 --implementation cp --abi cp311 -d . \
    && printf '%s  %s\n' 5b7b6ecd566e12fc7d55b1de476b5b35461deb632b40216ad52894cf402aed90 \
       open3d_cpu-0.20.0-cp311-cp311-manylinux_2_35_x86_64.whl > /tmp/open3d.sha256 \
    && sha256sum -c /tmp/open3d.sha256 \
    && rm -rf /tmp/pip /tmp/open3d.sha256

FROM ${BASE_IMAGE}

# Layers from the least to the most often changed: system packages, the locked third-party set, torch, the starter
# set, then the package's source and the files the components read. A source change rebuilds only the last layers.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    LANG=C.UTF-8 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONPATH=/opt/relightful

# git: DVC needs it to work in a repository checkout; libgomp1: DeepSpeed's CPU op below. Versions come with the pinned
# base image's Debian release.
# Python packages go to a venv, the same on every base (Debian's own python3 is externally managed).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends git libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 1000 --user-group --create-home --shell /usr/sbin/nologin relightful \
    && install -d -o 1000 -g 1000 /workspace \
    && python3 -m venv /opt/venv \
    && pip install --no-cache-dir pip==26.3

# Every third-party package at the version of docker/cpu-lock.txt (pip freeze of a full install; regenerate with
# `docker/build-local.sh --update-lock`). --no-deps: the lock is complete, and nothing can pull a CUDA torch. DeepSpeed
# comes after torch, below.
COPY constraints.txt docker/cpu-lock.txt /tmp/build/
RUN grep -v '^deepspeed==' /tmp/build/cpu-lock.txt > /tmp/build/lock-but-deepspeed.txt \
    && pip install --no-cache-dir --no-deps -c /tmp/build/constraints.txt -r /tmp/build/lock-but-deepspeed.txt

# The CPU torch wheel (the PyPI torch wheel would pull several GB of CUDA libraries); its dependencies are in the lock.
# TORCH_FIND_LINKS: a folder holding the wheel, mounted for the build only, instead of the PyTorch index (local builds).
ARG TORCH_FIND_LINKS=""
RUN PIP_NO_INDEX="${TORCH_FIND_LINKS:+1}" PIP_FIND_LINKS="${TORCH_FIND_LINKS}" \
        pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
    && python -c "import torch; assert torch.version.cuda is None, torch.__version__"

# DeepSpeed with its CPU communication op (shm_comm) compiled here, against this torch: training would otherwise
# JIT-compile it at first use, and the image has no compiler (nor, in a pod, a writable extension cache). The compiler
# and Python's headers (when the base lacks them) leave in the same layer; the op needs only libgomp1.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ \
    && { [ -e "$(python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h" ] \
         || apt-get install -y --no-install-recommends python3-dev; } \
    && DS_ACCELERATOR=cpu DS_BUILD_OPS=0 DS_BUILD_SHM_COMM=1 \
       pip install --no-cache-dir --no-deps --no-build-isolation -c /tmp/build/constraints.txt deepspeed==0.19.8 \
    && apt-get purge -y --auto-remove g++ python3-dev \
    && rm -rf /var/lib/apt/lists/* \
    && python -c "from deepspeed.git_version_info import installed_ops as ops; assert ops['deepspeed_shm_comm'], ops"

COPY --from=starter-npm /cache/pmndrs-assets-1.7.0.tgz /opt/relightful/starter-cache/
COPY --from=starter-deb /cache/ /opt/relightful/starter-cache/
COPY --from=starter-pypi /cache/open3d_cpu-0.20.0-cp311-cp311-manylinux_2_35_x86_64.whl /opt/relightful/starter-cache/
ENV RELIGHTFUL_STARTER_CACHE=/opt/relightful/starter-cache \
    RELIGHTFUL_WEIGHTS=/opt/relightful/weights

# Non-editable install of the package; constraints.txt and the lock keep every installed version (torch included).
# The mlops extra carries what the MLflow server of k8s/base/mlflow.yaml needs: psycopg2-binary (PostgreSQL) and
# mlflow[auth] (basic-auth app).
COPY pyproject.toml README.md /tmp/build/
COPY src /tmp/build/src
RUN pip install --no-cache-dir -c /tmp/build/constraints.txt -c /tmp/build/cpu-lock.txt \
        '/tmp/build[train,mlops,starter,serve]' \
    && pip check \
    && python -c "import psycopg2, flask_wtf" \
    && rm -rf /tmp/build

# The person segmenter's weights (npm registry, sha256-checked) at build time: pods never download them.
RUN relightful fetch-weights --isnet

# kfp components import `components.*` from here (PYTHONPATH above); the params and DAG travel with them.
COPY components /opt/relightful/components
COPY pipelines /opt/relightful/pipelines
COPY params.yaml dvc.yaml /opt/relightful/

# The build context has no .git (see .dockerignore): training tags model versions with this commit instead. Declared
# last, so that a new commit rebuilds nothing above.
ARG GIT_COMMIT=unknown
ENV GIT_COMMIT=${GIT_COMMIT}

# Numeric user so that Kubernetes' runAsNonRoot can verify it.
USER 1000:1000
WORKDIR /workspace
# No entry point: `docker run IMAGE relightful train ...` runs the command as given.
CMD ["relightful", "--help"]
