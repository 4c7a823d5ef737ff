# CPU image: ghcr.io/relightful/relightful:0.1.0-cpu
#   docker build -f docker/cpu.Dockerfile -t ghcr.io/relightful/relightful:0.1.0-cpu --build-arg GIT_COMMIT="$(git rev-parse HEAD)" .
# Runs every pipeline step that needs no GPU, the MLflow server and the schedule Job.
# The starter set's CC0 maps come from two packages (DESIGN 5; relightful.data.starter_data). They are fetched here, at
# build time, into the cache the job reads, so that a pod runs `relightful starter-data` with no package index.
FROM node:22.12.0-bookworm-slim AS starter-npm
WORKDIR /cache
RUN npm pack @pmndrs/assets@1.7.0 --silent

FROM python:3.11.14-slim-bookworm AS starter-deb
WORKDIR /cache
RUN apt-get update && apt-get download blender-data && rm -rf /var/lib/apt/lists/*

FROM python:3.11.14-slim-bookworm

# The build context has no .git (see .dockerignore): training tags model versions with this commit instead.
ARG GIT_COMMIT=unknown
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    GIT_COMMIT=${GIT_COMMIT} \
    PYTHONPATH=/opt/relightful

# git: DVC needs it to work in a repository checkout. Versions come with the pinned base image's Debian release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 1000 --user-group --create-home --shell /usr/sbin/nologin relightful \
    && install -d -o 1000 -g 1000 /workspace

# The CPU torch wheel first: the PyPI torch wheel would pull several GB of CUDA libraries.
COPY constraints.txt /tmp/build/constraints.txt
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

# Non-editable install of the package; constraints.txt keeps torch at the wheel above. The mlops extra carries what
# the MLflow server of k8s/base/mlflow.yaml needs: psycopg2-binary (PostgreSQL) and mlflow[auth] (basic-auth app).
COPY pyproject.toml README.md /tmp/build/
COPY src /tmp/build/src
RUN pip install --no-cache-dir -c /tmp/build/constraints.txt '/tmp/build[train,mlops,starter,serve]' \
    && python -c "import psycopg2, flask_wtf" \
    && rm -rf /tmp/build

# The person segmenter's weights (npm registry, sha256-checked) at build time: pods never download them.
ENV RELIGHTFUL_WEIGHTS=/opt/relightful/weights
RUN relightful fetch-weights --isnet

# kfp components import `components.*` from here (PYTHONPATH above); the params and DAG travel with them.
COPY components /opt/relightful/components
COPY pipelines /opt/relightful/pipelines
COPY params.yaml dvc.yaml /opt/relightful/
COPY --from=starter-npm /cache/pmndrs-assets-1.7.0.tgz /opt/relightful/starter-cache/
COPY --from=starter-deb /cache/ /opt/relightful/starter-cache/
ENV RELIGHTFUL_STARTER_CACHE=/opt/relightful/starter-cache

# Numeric user so that Kubernetes' runAsNonRoot can verify it.
USER 1000:1000
WORKDIR /workspace
# No entry point: `docker run IMAGE relightful train ...` runs the command as given.
CMD ["relightful", "--help"]
