#!/usr/bin/env bash
# Build the CPU image with podman on a machine without Docker and without a container registry (README, "Deploy";
# docs/cluster.md, "Build locally"):
#
#   docker/build-local.sh [--tag TAG] [--no-cache] [--rebuild-base] [--update-lock]
#
# - base: Debian bookworm (Python 3.11) made by debootstrap from the host's Debian mirror and imported into podman as
#   localhost/relightful-base:bookworm-py311; the `starter-npm` stage runs on that base plus Node.js from PyPI
#   (docker/local-node.Dockerfile). Both are made once and reused (--rebuild-base makes them again).
# - torch: the CPU wheel that pip finds on this machine (`pip download --no-index torch==2.13.0`, i.e. its
#   find-links), or the file TORCH_WHEEL names, in a folder mounted for the build only (TORCH_FIND_LINKS) at /mnt:
#   a mount point the base already has, so that the build leaves no empty folder behind.
# - everything else from the registries that docker/cpu.Dockerfile names (PyPI, npm, Debian), at the versions of
#   constraints.txt and docker/cpu-lock.txt. The host's CA bundle is mounted for the build, not copied.
# - tag: ghcr.io/relightful/relightful:<version>-cpu, as a `docker build` of the README; --tag overrides.
# --update-lock rewrites docker/cpu-lock.txt (pip freeze of a fresh full install on the base) before building.
# Earlier builds' layers stay in podman's storage as the cache: `podman image prune` frees the unused ones.
#
# Environment: PYTHON (a Python with pip; default .venv/bin/python, else python3), TORCH_WHEEL, DEBIAN_MIRROR and
# DEBIAN_SECURITY_MIRROR (the base's apt sources),
# CA_BUNDLE (default /etc/ssl/certs/ca-certificates.crt), CONTAINERS_CONF (default: a file written here that selects
# runc and file limits podman can set without CAP_SYS_RESOURCE), BASE_IMAGE, NODE_IMAGE (local tags).
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml | head -n 1)
tag="ghcr.io/relightful/relightful:${version}-cpu"
base=${BASE_IMAGE:-localhost/relightful-base:bookworm-py311}
node=${NODE_IMAGE:-localhost/relightful-node:bookworm}
ca=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
pip_version=$(sed -n 's/.*pip install --no-cache-dir pip==\([0-9.]*\).*/\1/p' docker/cpu.Dockerfile | head -n 1)
no_cache=() rebuild_base=0 update_lock=0
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) tag=$2; shift 2 ;;
    --no-cache) no_cache=(--no-cache); shift ;;
    --rebuild-base) rebuild_base=1; shift ;;
    --update-lock) update_lock=1; shift ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-local.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

command -v podman >/dev/null || { echo "build-local.sh: podman is missing (apt-get install podman runc)" >&2; exit 1; }
[ -r "$ca" ] || { echo "build-local.sh: no CA bundle at $ca (set CA_BUNDLE)" >&2; exit 1; }
work=$(mktemp -d "${TMPDIR:-/tmp}/relightful-build.XXXXXX")
trap 'rm -rf --one-file-system "$work"' EXIT
if [ -z "${CONTAINERS_CONF:-}" ]; then
  printf '[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]\n[engine]\nruntime = "runc"\n' \
    > "$work/containers.conf"
  export CONTAINERS_CONF="$work/containers.conf"
fi
mounts=(--volume "$ca:/etc/ssl/certs/ca-certificates.crt:ro")

debian_mirror() {  # the first bookworm mirror of this host's apt sources, else deb.debian.org
  local m
  m=$(grep -hs -A3 '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | awk '/^URIs:/{u=$2} /^Suites:.*bookworm( |$)/{print u; exit}')
  [ -n "$m" ] || m=$(awk '$1=="deb" && $3=="bookworm" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  echo "${DEBIAN_MIRROR:-${m:-http://deb.debian.org/debian}}"
}

make_base() {
  command -v debootstrap >/dev/null || { echo "build-local.sh: debootstrap is missing (apt-get install debootstrap)" >&2; exit 1; }
  [ "$(id -u)" = 0 ] || { echo "build-local.sh: debootstrap needs root" >&2; exit 1; }
  local mirror rootfs t0
  mirror=$(debian_mirror) rootfs="$work/rootfs" t0=$SECONDS
  echo "== base $base: debootstrap bookworm from $mirror"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" "$mirror" \
    > "$work/debootstrap.log" 2>&1 || { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }
  # the image's apt: the release, its updates and security fixes (what `apt-get install` in the Dockerfile uses)
  printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb %s bookworm-security main\n' \
    "$mirror" "$mirror" "${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}" > "$rootfs/etc/apt/sources.list"
  case "$rootfs" in "$work"/rootfs) ;; *) echo "build-local.sh: unexpected rootfs $rootfs" >&2; exit 1 ;; esac
  # slim, as Debian's own images: no apt caches or translations, no docs or man pages (now and for later packages)
  printf '%s\n' \
    'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };' \
    'APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };' \
    'Dir::Cache::pkgcache "";' 'Dir::Cache::srcpkgcache "";' 'Acquire::Languages "none";' \
    > "$rootfs/etc/apt/apt.conf.d/docker-clean"
  printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' 'path-exclude /usr/share/man/*' \
    'path-exclude /usr/share/info/*' 'path-exclude /usr/share/locale/*' 'path-include /usr/share/locale/locale.alias' \
    'path-exclude /usr/share/lintian/*' > "$rootfs/etc/dpkg/dpkg.cfg.d/docker"
  find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "$rootfs/usr/share/locale" -mindepth 1 -not -name locale.alias -not -type d -delete
  rm -rf "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/lintian/* \
    "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/var/log/* "$rootfs"/tmp/*
  tar --numeric-owner -C "$rootfs" -cf "$work/rootfs.tar" .
  rm -rf "$rootfs"
  podman import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' "$work/rootfs.tar" "$base" >/dev/null
  rm -f "$work/rootfs.tar"
  echo "== base made in $((SECONDS - t0)) s"
}

make_node() {
  echo "== node $node (for the starter-npm stage)"
  podman build --quiet --pull=never --network=host --layers "${mounts[@]}" --build-arg "BASE_IMAGE=$base" \
    -f docker/local-node.Dockerfile -t "$node" docker >/dev/null
}

torch_wheel() {  # the CPU torch wheel in $work/wheels
  local py=${PYTHON:-}
  [ -n "$py" ] || { [ -x .venv/bin/python ] && py=.venv/bin/python || py=python3; }
  mkdir -p "$work/wheels"
  if [ -n "${TORCH_WHEEL:-}" ]; then
    cp "$TORCH_WHEEL" "$work/wheels/"
  else
    "$py" -m pip download --quiet --no-deps --no-index --only-binary=:all: torch==2.13.0 -d "$work/wheels" \
      || { echo "build-local.sh: pip finds no local torch==2.13.0 wheel; set TORCH_WHEEL to the CPU wheel" >&2; exit 1; }
  fi
  case "$(ls "$work/wheels")" in
    torch-2.13.0+cpu-cp311-*.whl) ;;
    *) echo "build-local.sh: $(ls "$work/wheels") is not torch 2.13.0's CPU wheel for Python 3.11" >&2; exit 1 ;;
  esac
}

update_lock() {
  echo "== docker/cpu-lock.txt: pip freeze of a full install on $base"
  podman run --rm --network=host "${mounts[@]}" --volume "$work/wheels:/wheels:ro" --volume "$PWD:/src:ro" \
    -e PIP_DISABLE_PIP_VERSION_CHECK=1 "$base" bash -euc "
      python3 -m venv /tmp/venv && export PATH=/tmp/venv/bin:\$PATH
      pip install --quiet --no-cache-dir pip==$pip_version
      pip install --quiet --no-cache-dir /wheels/torch-*.whl
      mkdir /tmp/build && cp -r /src/pyproject.toml /src/README.md /src/src /src/constraints.txt /tmp/build/
      pip install --quiet --no-cache-dir -c /tmp/build/constraints.txt '/tmp/build[train,mlops,starter,serve]' >&2
      pip check >&2
      pip freeze --all --exclude pip --exclude relightful --exclude torch" > "$work/lock"
  { echo "# Every third-party package of the CPU image but torch and pip, setuptools included: pip freeze --all of a"
    echo "# full install (constraints.txt) on Debian bookworm's Python 3.11. Made by docker/build-local.sh --update-lock;"
    echo "# rerun it when pyproject.toml or constraints.txt change. docker/cpu.Dockerfile installs exactly this set, and"
    echo "# tests/test_image.py checks the image's pip freeze against it."
    cat "$work/lock"; } > docker/cpu-lock.txt
  echo "   $(grep -vc '^#' docker/cpu-lock.txt) packages"
}

if [ "$rebuild_base" = 1 ] || ! podman image exists "$base"; then make_base; fi
if [ "$rebuild_base" = 1 ] || ! podman image exists "$node"; then make_node; fi
torch_wheel
[ "$update_lock" = 0 ] || update_lock

echo "== $tag"
t0=$SECONDS
podman build --pull=never --network=host --layers "${no_cache[@]}" "${mounts[@]}" \
  --volume "$work/wheels:/mnt:ro" --build-arg TORCH_FIND_LINKS=/mnt \
  --build-arg "BASE_IMAGE=$base" --build-arg "NODE_IMAGE=$node" \
  --build-arg "GIT_COMMIT=$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
  -f docker/cpu.Dockerfile -t "$tag" .
size=$(podman image inspect --format '{{.Size}}' "$tag")
echo "== built $tag in $((SECONDS - t0)) s ($SECONDS s in all): $(podman image inspect --format '{{.Id}}' "$tag" | cut -c1-12)," \
  "$(awk "BEGIN {printf \"%.2f GB (%d MiB)\", $size / 1e9, $size / 1048576}")"
