#!/usr/bin/env bash
# Docker smoke test: build the image, run it read-only, wait for /readyz, classify real FashionMNIST
# test images through /predict, check the answers, the non-root user and the HEALTHCHECK; the
# container is removed whatever happens. Needs artifacts/model.safetensors (`make model`), the
# dataset and a Python with Pillow (the project's .venv).
#
# Builds and runs with ../shared/tools/container (podman, offline); CONTAINER_TOOL overrides it.
# Environment: IMAGE (default fashion-serve:smoke), SMOKE_PORT (default 18000), PY (.venv/bin/python),
# FASHION_DATA_DIR (default /usr/share/datasets/fashion-mnist).
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
# The tool: $CONTAINER_TOOL, else ../shared/tools/container beside the checkout, else beside the main
# checkout of this repository (for a clone made elsewhere), else `container` on the PATH.
tool=${CONTAINER_TOOL:-}
if [ -z "$tool" ]; then
  main_checkout=$(dirname "$(git rev-parse --path-format=absolute --git-common-dir)")
  for candidate in "$root/../shared/tools/container" "$main_checkout/../shared/tools/container" \
                   "$(git config --get remote.origin.url 2>/dev/null || true)/../shared/tools/container" \
                   "$(command -v container || true)"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] && [ -f "$candidate" ]; then tool=$candidate; break; fi
  done
  tool=${tool:-$root/../shared/tools/container}
fi
image=${IMAGE:-fashion-serve:smoke}
port=${SMOKE_PORT:-18000}
PY=${PY:-.venv/bin/python}
data=${FASHION_DATA_DIR:-/usr/share/datasets/fashion-mnist}
base=http://127.0.0.1:$port
work=$(mktemp -d)
name=""

fail() { echo "docker-smoke: FAILED: $*" >&2; exit 1; }
cleanup() {
  local rc=$?
  if [ -n "$name" ]; then
    [ "$rc" = 0 ] || { echo "docker-smoke: the container's last log lines:" >&2; "$tool" podman logs --tail 30 "$name" 2>&1 | grep -v -e "systemd connection" -e "CNI config" >&2 || true; }
    ctr podman rm -f -t 2 "$name" >/dev/null || echo "docker-smoke: could not remove container $name" >&2
  fi
  [ "$rc" = 0 ] || grep -v -e 'systemd connection' -e 'CNI config' "$work/tool.err" 2>/dev/null | tail -20 >&2 || true
  rm -rf "$work"
}
trap cleanup EXIT
# The tool's stderr goes to a file, shown on failure: podman without systemd logs an error for
# every healthcheck timer it cannot create, and a detached container's monitor (conmon) inherits
# the stderr of `podman run`, so a pipe there would never close.
ctr() { "$tool" "$@" 2>>"$work/tool.err"; }

[ -x "$tool" ] || fail "no container tool at $tool"
[ -f artifacts/model.safetensors ] || fail "artifacts/model.safetensors is missing: run \`make model\` first"
[ -x "$PY" ] || fail "$PY not found: run \`make setup\` first (it provides Pillow to write the test images)"

echo "== build $image"
started=$SECONDS
"$tool" build -t "$image" . >"$work/build.log" 2>&1 || { tail -30 "$work/build.log" >&2; fail "image build"; }
echo "built in $((SECONDS - started)) s; $(grep -m1 '^model ' "$work/build.log" || echo 'model check output missing')"

echo "== test images from the FashionMNIST test set"
"$PY" - "$data" "$work" <<'PY'
"""Write the first 64 test images as PNGs, exactly as stored (light garment on dark), with their labels."""
import gzip, json, pathlib, sys
from PIL import Image

data, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
def read(name: str) -> bytes:
    for path in (data / f"{name}.gz", data / name):
        if path.exists():
            return gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    sys.exit(f"docker-smoke: {name}(.gz) not in {data}: run `make data` or set FASHION_DATA_DIR")
images, labels = read("t10k-images-idx3-ubyte")[16:], read("t10k-labels-idx1-ubyte")[8:]
for i in range(64):
    Image.frombytes("L", (28, 28), images[i * 784 : (i + 1) * 784]).save(out / f"img{i:02d}.png")
(out / "labels.json").write_text(json.dumps(list(labels[:64])))
PY

echo "== run (read-only root filesystem, one tmpfs at /tmp) and wait for /readyz"
# --read-only-tmpfs=false: like `docker run --read-only`, nothing is writable but the one tmpfs the image
# names (Dockerfile): /tmp, for the workers' metrics files. Two workers, so /metrics must add them up.
name=$(ctr run -t "$image" -p "$port:8000" --wait /readyz -- --read-only --read-only-tmpfs=false \
         --tmpfs /tmp:rw,size=64m,mode=1777 -e WEB_CONCURRENCY=2) \
  || fail "the container did not become ready on $base/readyz"
echo "ready: $name"

echo "== POST one image to /predict"
curl -fsS -F "file=@$work/img00.png;type=image/png" "$base/predict" >"$work/one.json" \
  || fail "POST /predict with one image"
echo "== POST 64 images to /predict (field 'files')"
args=(); for f in "$work"/img*.png; do args+=(-F "files=@$f;type=image/png"); done
curl -fsS "${args[@]}" "$base/predict" >"$work/many.json" || fail "POST /predict with 64 images"

"$PY" - "$work" <<'PY' || fail "the /predict answers"
"""Check the answers: a known class name, ten probabilities summing to 1, and the real model's accuracy."""
import json, math, pathlib, sys
from models import CLASS_NAMES

work = pathlib.Path(sys.argv[1])
labels = json.loads((work / "labels.json").read_text())
def check(p: dict) -> None:
    assert p["class_name"] in CLASS_NAMES, f"unknown class {p['class_name']!r}"
    probs = p["probabilities"]
    assert set(probs) == set(CLASS_NAMES), f"probabilities for {sorted(probs)}"
    assert math.isclose(sum(probs.values()), 1.0, abs_tol=1e-4), f"probabilities sum to {sum(probs.values())}"
    assert p["class_name"] == max(probs, key=probs.get), "class_name is not the most probable class"
one = json.loads((work / "one.json").read_text())
check(one)
print(f"one image: {one['class_name']} ({one['probabilities'][one['class_name']]:.3f}), label {CLASS_NAMES[labels[0]]}")
many = json.loads((work / "many.json").read_text())["predictions"]
assert len(many) == 64, f"{len(many)} predictions for 64 images"
for p in many:
    check(p)
right = sum(p["class_name"] == CLASS_NAMES[y] for p, y in zip(many, labels))
print(f"64 images: {right}/64 right")
# The served model tests at >= 90%; a random or untrained one would get about 6 of 64.
assert right >= 52, f"only {right}/64 right: this is not the trained model"
PY

echo "== /metrics adds up both workers; a header line over the limit is refused"
for i in $(seq 10); do
  count=$(curl -fsS "$base/metrics" | grep '^fashion_requests_total{method="POST",route="/predict",status="200"}' | cut -d' ' -f2)
  [ "$count" = 2.0 ] || fail "scrape $i of /metrics counted ${count:-no} /predict requests, not 2.0"
done
echo "10 scrapes: 2 /predict requests each time"
status=$(curl -s -o /dev/null -w '%{http_code}' -H "X-Big: $(head -c 9000 /dev/zero | tr '\0' a)" "$base/healthz")
[ "$status" = 431 ] || fail "a 9,000-byte header line got $status, not 431"
echo "9,000-byte header line: 431"

echo "== memory with two workers (RSS and PSS from /proc/PID/smaps_rollup; the container's cgroup)"
ctr podman exec "$name" sh -c 'for p in /proc/[0-9]*; do
    [ "${p#/proc/}" = "$$" ] && continue
    c=$(tr "\0" " " < "$p/cmdline" 2>/dev/null) || continue
    case "$c" in *python*) awk -v pid="${p#/proc/}" -v cmd="$(echo "$c" | cut -c1-70)" \
      "/^Rss:/{r=\$2} /^Pss:/{s=\$2} END{printf \"pid %s  RSS %.0f MB  PSS %.0f MB  %s\\n\", pid, r/1024, s/1024, cmd}" \
      "$p/smaps_rollup";; esac
  done' || fail "reading the workers' memory"
ctr podman exec "$name" sh -c 'f=/sys/fs/cgroup/memory.current; [ -r "$f" ] || f=/sys/fs/cgroup/memory/memory.usage_in_bytes
  awk "{printf \"container total: %.0f MB (%s)\\n\", \$1/1048576, \"$f\"}" "$f"' || echo "container total: no cgroup memory file"

echo "== user and healthcheck"
uid=$(ctr podman exec "$name" id -u) || fail "podman exec id -u"
[ "$uid" != 0 ] || fail "the server runs as root"
echo "runs as uid $uid ($(ctr podman exec "$name" id -un))"
ctr podman healthcheck run "$name" || fail "the HEALTHCHECK did not pass"
echo "healthcheck: healthy"
workers=$("$tool" podman logs "$name" 2>&1 | grep -c 'Started server process' || true)
echo "uvicorn workers: $workers (container sees $(ctr podman exec "$name" nproc) CPUs)"
"$tool" podman logs "$name" 2>&1 | grep -qi -e 'Traceback' -e 'read-only file system' && fail "errors in the container log"

echo "== image size"
ctr podman images --format '{{.Repository}}:{{.Tag}}  {{.Size}}' "$image"
echo "docker-smoke: passed"
