#!/usr/bin/env bash
# Builds the top-level Dockerfile's two targets (full, slim) unchanged with podman and runs each image's own
# command on loopback.
#
# No Docker engine here, and `podman run` cannot set limits on these machines, so:
#   1. debian:bookworm-slim is made locally (debootstrap --variant=minbase, podman import);
#   2. the Dockerfile is built in docker format (which keeps HEALTHCHECK) with chroot isolation, the
#      host's CA bundle mounted and named in the PIP_CERT build argument, so pip can verify the
#      package index behind this network's proxy;
#   3. the image's root file system is mounted (podman image mount), a small bundle bound read-only
#      at /bundle, and the image's CMD started under chroot as the image's user, with its ENV;
#   4. /readyz, the image's own HEALTHCHECK command and real predictions are checked, then SIGTERM
#      must stop it cleanly; the slim image must lack TensorFlow and Keras, answer exactly as the full one,
#      and refuse (503, saying why) to run a model on TensorFlow; with STACKSERVE_GRPC_PORT set, Triton's gRPC
#      client gets the same answers from it. Sizes and cold starts are printed.
# Needs root and apt (installs podman and debootstrap). Run by `make test-container` and `.ci/run`.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
WORK=${STACKSERVE_CONTAINER_WORK:-/var/tmp/stackserve-container}
IMAGE=localhost/stackserve:test
SLIM=localhost/stackserve:test-slim
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

build() {  # build TARGET IMAGE
  step "building the Dockerfile's $1 target"
  local started
  started=$(date +%s)
  "${PODMAN[@]}" build --format docker --isolation=chroot --cgroup-manager=cgroupfs --target "$1" \
    -v /etc/ssl/certs/ca-certificates.crt:/run/host-ca.crt:ro --build-arg PIP_CERT=/run/host-ca.crt \
    -t "$2" . >"$WORK/build-$1.log" 2>&1 || { tail -40 "$WORK/build-$1.log"; exit 1; }
  echo "built in $(( $(date +%s) - started )) s"
}
size_mib() { echo $(( $("${PODMAN[@]}" image inspect --format '{{.Size}}' "$1") / 1024 / 1024 )); }
build full "$IMAGE"
build slim "$SLIM"
FULL_MIB=$(size_mib "$IMAGE")
SLIM_MIB=$(size_mib "$SLIM")
echo "image sizes: full $FULL_MIB MiB, slim $SLIM_MIB MiB"

step "a small bundle to serve"
# Kept between runs; one this code cannot load, or without exported base models (older code), is fitted again.
if ! "$ROOT/.venv/bin/stacking" report "$WORK/bundle" >/dev/null 2>&1 || ! ls "$WORK"/bundle/base/*/*.tflite >/dev/null 2>&1; then
  rm -rf "$WORK/bundle" "$WORK/digits"
  "$ROOT/.venv/bin/stacking" data digits --out "$WORK/digits" --limit 200 >/dev/null
  "$ROOT/.venv/bin/stacking" fit --data "$WORK/digits" --out "$WORK/bundle" --models tiny_cnn --epochs 1 \
    --image-size 16 --tta 1 >/dev/null
fi

ROOTFS="$WORK/root"  # a writable view: the image's files below, the bundle, /tmp, /proc and /dev bound in
SERVER=""
MOUNTED=""
unmount_image() {
  [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null || true
  SERVER=""
  for m in bundle tmp proc dev ""; do umount -l "$ROOTFS/$m" 2>/dev/null || true; done
  [ -n "$MOUNTED" ] && "${PODMAN[@]}" image unmount "$MOUNTED" >/dev/null 2>&1 || true
  MOUNTED=""
}
trap unmount_image EXIT

inside() {  # a command inside the mounted image, as its user, with its ENV
  env -i "${ENVS[@]}" chroot --userspec="$USERSPEC" "$ROOTFS" "$@"
}

start_image() {  # start_image IMAGE [NAME=VALUE...]: mount it and start its CMD; sets READY_S
  step "starting $1's command from its root file system"
  MOUNTED=$1
  local mnt
  mnt=$("${PODMAN[@]}" image mount "$1")
  USERSPEC=$("${PODMAN[@]}" image inspect --format '{{.Config.User}}' "$1")
  mapfile -t CMD < <("${PODMAN[@]}" image inspect --format '{{range .Config.Cmd}}{{println .}}{{end}}' "$1" | sed '/^$/d')
  mapfile -t ENVS < <("${PODMAN[@]}" image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$1" | sed '/^$/d')
  mapfile -t HEALTH < <("${PODMAN[@]}" image inspect --format '{{range .HealthCheck.Test}}{{println .}}{{end}}' "$1" | sed '/^$/d')
  mkdir -p "$ROOTFS"
  mount --bind "$mnt" "$ROOTFS"
  mkdir -p "$ROOTFS/bundle" 2>/dev/null || true
  mount --bind "$WORK/bundle" "$ROOTFS/bundle" && mount -o remount,bind,ro "$ROOTFS/bundle"
  mount -t tmpfs tmpfs "$ROOTFS/tmp"
  mount -t proc proc "$ROOTFS/proc"
  mount --rbind /dev "$ROOTFS/dev"
  shift
  local started
  started=$(date +%s.%N)
  # A simple command, not a function: env execs chroot execs the CMD, so $! is the server's own PID.
  env -i "${ENVS[@]}" "$@" chroot --userspec="$USERSPEC" "$ROOTFS" "${CMD[@]}" >"$WORK/server.log" 2>&1 &
  SERVER=$!
  local status=""
  for _ in $(seq 1 240); do
    status=$("$PY" -c "
import urllib.request as u, urllib.error as e
try: print(u.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status)
except e.HTTPError as x: print(x.code, x.read().decode())
except OSError: print('down')" 2>/dev/null)
    case "$status" in 200) break;; 503*"loading"*|down) ;; *) break;; esac
    kill -0 "$SERVER" 2>/dev/null || { cat "$WORK/server.log"; echo "the server exited"; exit 1; }
    sleep 0.2
  done
  READY_S=$("$PY" -c "import time; print(f'{time.time() - $started:.1f}')")
  READY_STATUS=$status
}

predict() {  # predict OUT.json: every test scan's answer, as the service gives it
  "$PY" - "$WORK/digits/test" "$1" <<'PY'
import json, sys
from pathlib import Path

import httpx

images = sorted(Path(sys.argv[1]).glob("*.png"))[:16]
response = httpx.post("http://127.0.0.1:8000/v1/predict", timeout=60,
                      files=[("files", (i.name, i.read_bytes(), "image/png")) for i in images])
response.raise_for_status()
predictions = response.json()["predictions"]
assert all(p["label"] in [str(d) for d in range(10)] for p in predictions), predictions
Path(sys.argv[2]).write_text(json.dumps([p["probabilities"] for p in predictions]))
print(f"{len(predictions)} scans; {images[0].name}: {predictions[0]['label']} ({predictions[0]['confidence']:.3f})")
PY
}

start_ready() {  # start_ready IMAGE [NAME=VALUE...]: started and ready (200), or the test fails; sets READY_S
  start_image "$@"
  [ "$READY_STATUS" = 200 ] || { tail -40 "$WORK/server.log"; echo "not ready: $READY_STATUS"; exit 1; }
  echo "ready in $READY_S s"
}

stop_cleanly() {
  step "SIGTERM stops it cleanly"
  kill -TERM "$SERVER"
  for _ in $(seq 1 60); do kill -0 "$SERVER" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$SERVER" 2>/dev/null; then echo "still running 30 s after SIGTERM"; exit 1; fi
  grep -q "Finished server process" "$WORK/server.log" || { tail -20 "$WORK/server.log"; exit 1; }
  SERVER=""
  unmount_image
}

start_ready "$IMAGE"
FULL_READY=$READY_S
step "the image's HEALTHCHECK command, as the image's user"
[ "${HEALTH[0]}" = "CMD" ] || { echo "unexpected HEALTHCHECK form: ${HEALTH[*]}"; exit 1; }
inside "${HEALTH[@]:1}"
echo "healthy"
step "real predictions"
predict "$WORK/full.json"
stop_cleanly

start_ready "$SLIM" STACKSERVE_GRPC_PORT=8001
SLIM_READY=$READY_S
step "no TensorFlow or Keras in the slim image"
if inside python3 -c "import tensorflow" 2>/dev/null; then echo "tensorflow imports in the slim image"; exit 1; fi
if inside python3 -c "import keras" 2>/dev/null; then echo "keras imports in the slim image"; exit 1; fi
echo "import tensorflow and import keras fail there"
step "the same answers as the full image"
predict "$WORK/slim.json"
cmp "$WORK/full.json" "$WORK/slim.json" || { echo "the slim image answers differently"; exit 1; }
echo "identical probabilities"
step "the same answers over gRPC, through Triton's client"
"$PY" - "$WORK/digits/test" "$WORK/slim.json" <<'PY'
import json, sys
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

images = [p.read_bytes() for p in sorted(Path(sys.argv[1]).glob("*.png"))[:16]]
client = grpcclient.InferenceServerClient("127.0.0.1:8001")
assert client.is_server_ready() and client.is_model_ready("bundle")
tensor = grpcclient.InferInput("images", [len(images)], "BYTES").set_data_from_numpy(np.array(images, dtype=object))
answer = client.infer("bundle", [tensor]).as_numpy("probabilities")
over_http = np.array([list(p.values()) for p in json.loads(Path(sys.argv[2]).read_text())])
np.testing.assert_array_equal(answer, over_http)
print(f"{len(images)} scans over gRPC: the same probabilities as over HTTP")
PY
stop_cleanly

step "a bundle run on TensorFlow is refused by the slim image, saying why"
start_image "$SLIM" STACKSERVE_RUNTIME=tf
case "$READY_STATUS" in
  503*"run on TensorFlow (--runtime tf), which this installation does not have"*) echo "refused: ${READY_STATUS:0:160}...";;
  *) tail -20 "$WORK/server.log"; echo "expected a 503 naming TensorFlow, got: $READY_STATUS"; exit 1;;
esac
unmount_image

step "the full image serving through TensorFlow, for its cold start"
start_ready "$IMAGE" STACKSERVE_RUNTIME=tf
TF_READY=$READY_S
stop_cleanly

echo "container check passed; full image $FULL_MIB MiB, ready in $FULL_READY s (on TensorFlow: $TF_READY s);" \
  "slim image $SLIM_MIB MiB ($(( 100 * SLIM_MIB / FULL_MIB ))% of it), ready in $SLIM_READY s"
