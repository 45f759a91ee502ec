#!/usr/bin/env bash
# Builds the top-level Dockerfile unchanged with podman and runs the image's own command on loopback.
#
# No Docker engine here, and `podman run` cannot set limits on these machines, so:
#   1. debian:bookworm-slim is made locally (debootstrap --variant=minbase, podman import);
#   2. the Dockerfile is built in docker format (which keeps HEALTHCHECK) with chroot isolation, the
#      host's CA bundle mounted and named in the PIP_CERT build argument, so pip can verify the
#      package index behind this network's proxy;
#   3. the image's root file system is mounted (podman image mount), a small bundle bound read-only
#      at /bundle, and the image's CMD started under chroot as the image's user, with its ENV;
#   4. /readyz, the image's own HEALTHCHECK command and a real prediction are checked, then SIGTERM
#      must stop it cleanly. The image size is printed.
# Needs root and apt (installs podman and debootstrap). Run by `make test-container` and `.ci/run`.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
WORK=${STACKSERVE_CONTAINER_WORK:-/var/tmp/stackserve-container}
IMAGE=localhost/stackserve:test
BASE=docker.io/library/debian:bookworm-slim
PY=$ROOT/.venv/bin/python
mkdir -p "$WORK"

step() { echo "== $*"; }

if ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null; then
  step "installing podman and debootstrap"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman debootstrap fuse-overlayfs >/dev/null
fi
PODMAN=(podman --cgroup-manager=cgroupfs)

if ! "${PODMAN[@]}" image exists "$BASE"; then
  step "making $BASE with debootstrap"
  rm -rf "$WORK/rootfs"
  debootstrap --variant=minbase bookworm "$WORK/rootfs" http://deb.debian.org/debian >"$WORK/debootstrap.log"
  rm -rf "$WORK/rootfs/var/lib/apt/lists/"* "$WORK/rootfs/var/cache/apt/"*
  tar -C "$WORK/rootfs" -c . | "${PODMAN[@]}" import - "$BASE" >/dev/null
  rm -rf "$WORK/rootfs"
fi

step "building the Dockerfile"
started=$(date +%s)
"${PODMAN[@]}" build --format docker --isolation=chroot --cgroup-manager=cgroupfs \
  -v /etc/ssl/certs/ca-certificates.crt:/run/host-ca.crt:ro --build-arg PIP_CERT=/run/host-ca.crt \
  -t "$IMAGE" . >"$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log"; exit 1; }
echo "built in $(( $(date +%s) - started )) s"
SIZE=$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$IMAGE")
echo "image size: $(( SIZE / 1024 / 1024 )) MiB"

step "a small bundle to serve"
# Kept between runs; one this code cannot load (an older bundle format) is fitted again.
if ! "$ROOT/.venv/bin/stacking" report "$WORK/bundle" >/dev/null 2>&1; then
  rm -rf "$WORK/bundle" "$WORK/digits"
  "$ROOT/.venv/bin/stacking" data digits --out "$WORK/digits" --limit 200 >/dev/null
  "$ROOT/.venv/bin/stacking" fit --data "$WORK/digits" --out "$WORK/bundle" --models tiny_cnn --epochs 1 \
    --image-size 16 --tta 1 >/dev/null
fi

step "starting the image's command from its root file system"
MNT=$("${PODMAN[@]}" image mount "$IMAGE")
USERSPEC=$("${PODMAN[@]}" image inspect --format '{{.Config.User}}' "$IMAGE")
mapfile -t CMD < <("${PODMAN[@]}" image inspect --format '{{range .Config.Cmd}}{{println .}}{{end}}' "$IMAGE" | sed '/^$/d')
mapfile -t ENVS < <("${PODMAN[@]}" image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$IMAGE" | sed '/^$/d')
mapfile -t HEALTH < <("${PODMAN[@]}" image inspect --format '{{range .HealthCheck.Test}}{{println .}}{{end}}' "$IMAGE" | sed '/^$/d')
ROOTFS="$WORK/root"  # a writable view: the image's files below, the bundle, /tmp, /proc and /dev bound in
mkdir -p "$ROOTFS"
cleanup() {
  [ -n "${SERVER:-}" ] && kill "$SERVER" 2>/dev/null || true
  for m in bundle tmp proc dev ""; do umount -l "$ROOTFS/$m" 2>/dev/null || true; done
  "${PODMAN[@]}" image unmount "$IMAGE" >/dev/null 2>&1 || true
}
trap cleanup EXIT
mount --bind "$MNT" "$ROOTFS"
mkdir -p "$ROOTFS/bundle" 2>/dev/null || true
mount --bind "$WORK/bundle" "$ROOTFS/bundle" && mount -o remount,bind,ro "$ROOTFS/bundle"
mount -t tmpfs tmpfs "$ROOTFS/tmp"
mount -t proc proc "$ROOTFS/proc"
mount --rbind /dev "$ROOTFS/dev"
env -i "${ENVS[@]}" chroot --userspec="$USERSPEC" "$ROOTFS" "${CMD[@]}" >"$WORK/server.log" 2>&1 &
SERVER=$!

ready=""
for _ in $(seq 1 240); do
  if "$PY" -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/readyz', timeout=2)" 2>/dev/null; then
    ready=yes; break
  fi
  kill -0 "$SERVER" 2>/dev/null || { cat "$WORK/server.log"; echo "the server exited"; exit 1; }
  sleep 0.5
done
[ -n "$ready" ] || { tail -40 "$WORK/server.log"; echo "not ready in time"; exit 1; }
echo "ready"

step "the image's HEALTHCHECK command, as the image's user"
[ "${HEALTH[0]}" = "CMD" ] || { echo "unexpected HEALTHCHECK form: ${HEALTH[*]}"; exit 1; }
env -i "${ENVS[@]}" chroot --userspec="$USERSPEC" "$ROOTFS" "${HEALTH[@]:1}"
echo "healthy"

step "a real prediction"
"$PY" - "$WORK/digits/test" <<'PY'
import sys
from pathlib import Path

import httpx

image = sorted(Path(sys.argv[1]).glob("*.png"))[0]
response = httpx.post("http://127.0.0.1:8000/v1/predict", files=[("files", (image.name, image.read_bytes(), "image/png"))],
                      timeout=60)
response.raise_for_status()
prediction = response.json()["predictions"][0]
assert prediction["label"] in [str(d) for d in range(10)], prediction
print(f"{image.name}: {prediction['label']} ({prediction['confidence']:.3f})")
PY

step "SIGTERM stops it cleanly"
kill -TERM "$SERVER"
for _ in $(seq 1 60); do kill -0 "$SERVER" 2>/dev/null || break; sleep 0.5; done
if kill -0 "$SERVER" 2>/dev/null; then echo "still running 30 s after SIGTERM"; exit 1; fi
grep -q "Finished server process" "$WORK/server.log" || { tail -20 "$WORK/server.log"; exit 1; }
SERVER=""
echo "container check passed; image size $(( SIZE / 1024 / 1024 )) MiB"
