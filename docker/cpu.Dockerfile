# CPU image: ghcr.io/relightful/relightful:0.1.0-cpu
#   docker build -f docker/cpu.Dockerfile -t ghcr.io/relightful/relightful:0.1.0-cpu --build-arg GIT_COMMIT="$(git rev-parse HEAD)" .
# Runs every pipeline step that needs no GPU, the MLflow server and the schedule Job.
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

# Non-editable install of the package; constraints.txt keeps torch at the wheel above.
COPY pyproject.toml README.md /tmp/build/
COPY src /tmp/build/src
RUN pip install --no-cache-dir -c /tmp/build/constraints.txt '/tmp/build[train,mlops,starter]' \
    && rm -rf /tmp/build

# kfp components import `components.*` from here (PYTHONPATH above); the params and DAG travel with them.
COPY components /opt/relightful/components
COPY pipelines /opt/relightful/pipelines
COPY params.yaml dvc.yaml /opt/relightful/

# Numeric user so that Kubernetes' runAsNonRoot can verify it.
USER 1000:1000
WORKDIR /workspace
# No entry point: `docker run IMAGE relightful train ...` runs the command as given.
CMD ["relightful", "--help"]
