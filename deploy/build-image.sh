#!/usr/bin/env bash
# Build dcoord's image from deploy/Dockerfile: docker when it is present, else buildah (no daemon:
# --isolation chroot, rootful, in the storage containers-storage.conf sets up: overlay or vfs).
#
#   deploy/build-image.sh                  localhost/dcoord:VERSION-cpu from the official python slim image
#   deploy/build-image.sh --local-base     the same from a Debian base made here with mmdebstrap (no
#                                          image registry needed: Debian's packages and a Python index)
#   deploy/build-image.sh --tag T          another tag; --cuda: CUDA torch (tag VERSION-cuda); --mpi: + Open MPI
#
# Where packages come from: PIP_INDEX_URL and TORCH_INDEX_URL (build arguments, the public indexes by
# default); with buildah, PIP_FIND_LINKS (a folder of wheels, e.g. a local CPU torch wheel) and PIP_CERT
# (a CA bundle for an HTTPS proxy) are mounted into the build and passed on, as pip itself reads them.
# BASE_IMAGE overrides the base; DEBIAN_MIRROR the mirror mmdebstrap uses; ENGINE=docker|buildah chooses.
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml)
flavour=cpu
tag=""
local_base=0
with_mpi=0
while [ $# -gt 0 ]; do
  case "$1" in
    --local-base) local_base=1 ;;
    --cuda) flavour=cuda ;;
    --mpi) with_mpi=1 ;;
    --tag) tag=${2:?--tag needs a value}; shift ;;
    --tag=*) tag=${1#--tag=} ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "build-image.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ "$with_mpi" = 1 ]; then flavour="$flavour-mpi"; fi
tag=${tag:-localhost/dcoord:$version-$flavour}
torch_index=${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}
if [ "${flavour%-mpi}" = cuda ] && [ -z "${TORCH_INDEX_URL:-}" ]; then
  torch_index=https://download.pytorch.org/whl/cu128
fi
pip_index=${PIP_INDEX_URL:-https://pypi.org/simple}

if [ -n "${ENGINE:-}" ]; then
  engine=$ENGINE  # docker or buildah, chosen
elif command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  engine=docker
elif command -v buildah >/dev/null 2>&1; then
  engine=buildah
else
  echo "build-image.sh: needs docker (with its daemon running) or buildah (apt-get install buildah)" >&2
  exit 1
fi

image_exists() {
  if [ "$engine" = docker ]; then docker image inspect "$1" >/dev/null 2>&1
  else buildah inspect --type image "$1" >/dev/null 2>&1; fi
}

base=${BASE_IMAGE:-docker.io/library/python:3.12-slim}
if [ "$local_base" = 1 ] && [ -z "${BASE_IMAGE:-}" ]; then
  # Debian's python3 (3.11 on bookworm) and what the Dockerfile needs, from Debian's packages; made once
  # and kept under this tag (remove it to remake it)
  base=localhost/dcoord-base:bookworm
  if ! image_exists "$base"; then
    command -v mmdebstrap >/dev/null || { echo "build-image.sh: --local-base needs mmdebstrap" >&2; exit 1; }
    mkdir -p build/image
    tarball=build/image/base.tar
    mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,passwd,ca-certificates \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
      --dpkgopt='path-exclude=/usr/share/locale/*' --aptopt='APT::Install-Recommends "false"' \
      bookworm "$tarball" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
    if [ "$engine" = docker ]; then
      docker import "$tarball" "$base"
    else
      ctr=$(buildah from scratch)
      buildah add --quiet "$ctr" "$tarball" / >/dev/null
      buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd python3 "$ctr"
      buildah commit --quiet "$ctr" "$base" >/dev/null
      buildah rm "$ctr" >/dev/null
    fi
    rm -f "$tarball"
  fi
fi

args=(--build-arg "BASE_IMAGE=$base" --build-arg "PIP_INDEX_URL=$pip_index"
      --build-arg "TORCH_INDEX_URL=$torch_index" --build-arg "WITH_MPI=$with_mpi")
started=$(date +%s)
if [ "$engine" = docker ]; then
  docker build -f deploy/Dockerfile "${args[@]}" -t "$tag" .
else
  if [ -n "${PIP_FIND_LINKS:-}" ]; then
    # the torch wheel found there is newer (a local +cpu version) than the index's, so pip takes it
    args+=(--volume "$PIP_FIND_LINKS:/build-wheels:ro" --build-arg PIP_FIND_LINKS=/build-wheels)
    if [ -z "${TORCH_INDEX_URL:-}" ]; then args+=(--build-arg "TORCH_INDEX_URL=$pip_index"); fi
  fi
  if [ -n "${PIP_CERT:-}" ]; then
    args+=(--volume "$PIP_CERT:/build-ca.crt:ro" --build-arg PIP_CERT=/build-ca.crt)
  fi
  buildah build --isolation chroot --layers -f deploy/Dockerfile "${args[@]}" -t "$tag" .
fi
if [ "$engine" = docker ]; then size=$(docker image inspect --format '{{.Size}}' "$tag")
else size=$(buildah images --format '{{.Size}}' "$tag" | head -1); fi
echo "build-image.sh: built $tag with $engine in $(( $(date +%s) - started )) s, size $size"
