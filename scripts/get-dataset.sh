#!/usr/bin/env bash
# Make FashionMNIST available, trying in order: already there, Debian's package, torchvision's download.
set -euo pipefail
PY=${1:-python3}
DIR=${FASHION_DATA_DIR:-/usr/share/datasets/fashion-mnist}
have() { [ -f "$DIR/t10k-labels-idx1-ubyte.gz" ] || [ -f "$DIR/t10k-labels-idx1-ubyte" ]; }

if have; then echo "dataset: found in $DIR"; exit 0; fi
if [ -z "${FASHION_DATA_DIR:-}" ] && command -v apt-get >/dev/null; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO=sudo; else SUDO=none; fi
  if [ "$SUDO" != none ]; then
    echo "dataset: installing Debian's dataset-fashion-mnist"
    if { $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
         || { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null; }; } && have; then
      echo "dataset: installed into $DIR"; exit 0
    fi
    echo "dataset: apt-get could not install dataset-fashion-mnist" >&2
  fi
fi
echo "dataset: downloading with torchvision (needs internet)"
if "$PY" -c "from training.data import load_fashion_mnist; load_fashion_mnist(download=True)"; then
  echo "dataset: downloaded into the cache (~/.cache/fashion-serve)"
  exit 0
fi
cat >&2 <<MSG
dataset: FashionMNIST is not available. Either
  - on Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist   (files land in /usr/share/datasets/fashion-mnist)
  - or put the four original .gz files in a folder and set FASHION_DATA_DIR to it
  - or connect to the internet and run: $PY -m training --download
MSG
exit 1
