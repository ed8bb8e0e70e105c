# fashion-serve: the FashionMNIST classifier behind its HTTP API, on CPU-only torch.
#
#   make model                          # artifacts/model.safetensors: the image serves this file
#   docker build -t fashion-serve .
#   docker run --rm -p 8000:8000 --read-only --tmpfs /tmp fashion-serve
#
# The one writable path it needs is /tmp, a tmpfs (Kubernetes: an emptyDir with medium Memory): the
# workers' metrics files (PROMETHEUS_MULTIPROC_DIR, so /metrics adds up every worker) and Python's
# temporary files. Without it a read-only container stops at start-up, saying so.
#
# The model comes from the build context rather than a training stage: training in the build
# would pull torchvision (here only installable with the multi-gigabyte CUDA torch), matplotlib
# and the dataset into every build and spend minutes training, for a 2.7 MB file that
# `make model` already produced. The image checks the file it serves: it loads, its checksums
# hold, its recorded test accuracy is at least MIN_ACCURACY.
#
# Build arguments (the defaults need none):
#   TORCH_INDEX_URL  where torch comes from; PyTorch's CPU-only wheel index, which is reachable
#                    from any normal build host. Without network access to it pip retries five
#                    times (about 8 s) and falls back to the sources its pip.conf names, such as
#                    a find-links folder holding the same CPU wheel.
#   TORCH_VERSION    the torch wheel, pinned with its +cpu local version so that no other source
#                    pip knows of can substitute the CUDA build of the same release.
#   MIN_ACCURACY     the build fails if the model's recorded test accuracy is lower.

# --- model: fail early, with the fix, when the artifact is missing ------------------------------
FROM python:3.11-slim-bookworm AS model
# The glob makes a missing model reach the check below instead of a bare "no such file" error.
COPY pyproject.toml artifacts/model.safetensor[s] /model/
RUN test -f /model/model.safetensors || { \
      echo "artifacts/model.safetensors is missing from the build context: run \`make model\` first" >&2; \
      exit 1; } \
 # The trainer writes it 0666 less its umask (0600 under umask 077); the server runs as another user.
 && chmod 0444 /model/model.safetensors

# --- build: a virtual environment in /opt/venv with the serving dependencies only ------------------
FROM python:3.11-slim-bookworm AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0+cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore \
    PATH=/opt/venv/bin:$PATH
# binutils only for `strip` below; this stage is thrown away.
RUN apt-get update && apt-get install -y --no-install-recommends binutils && rm -rf /var/lib/apt/lists/* \
 && python -m venv /opt/venv
# torch alone, without its dependencies, so that only this one lookup goes to the torch index;
# its small pure-Python dependencies come from the ordinary index with the project's below.
RUN pip install --no-compile --index-url "$TORCH_INDEX_URL" --no-deps "torch==$TORCH_VERSION"
# Dependencies before code, so editing the code reuses this layer. Serving only: no [train] extra.
WORKDIR /src
COPY pyproject.toml README.md ./
RUN pip install --no-compile . && pip uninstall -y fashion-serve \
 && python -c "import sys, torch; sys.exit(f'torch {torch.__version__} is a CUDA build' if torch.version.cuda else 0)"
COPY models ./models
COPY app ./app
COPY training ./training
RUN pip install --no-compile --no-deps . \
 # pip is not needed to serve (setuptools stays: torch declares it).
 && pip uninstall -y pip \
 # What serving never loads: C++ test binaries and libraries, headers, protoc.
 && t=/opt/venv/lib/python3.11/site-packages/torch \
 && rm -rf "$t/test" "$t/include" "$t/share" "$t/lib/libtorchbind_test.so" "$t/lib/libjitbackend_test.so" \
           "$t/lib/libbackend_with_compiler.so" "$t/lib/libaoti_custom_ops.so" \
 && find "$t/bin" -type f ! -name torch_shm_manager -delete \
 # Symbol tables (not the dynamic symbols) are a fifth of libtorch; Debian strips its shared
 # libraries the same way. Only torch's: wheels patched by auditwheel (numpy's) break when stripped.
 && strip --strip-unneeded "$t"/lib/*.so* \
 && find /opt/venv \( -name tests -o -name test \) -type d -path '*/site-packages/*' -prune -exec rm -rf {} + \
 # No bytecode yet: the runtime stage compiles only what serving imports (see there).
 && find /opt/venv -name __pycache__ -type d -prune -exec rm -rf {} +

# --- runtime -------------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm
ARG MIN_ACCURACY=0.90
# A fixed uid and gid, which Kubernetes' runAsUser/runAsGroup (deploy/kubernetes) name.
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin app
COPY --from=build /opt/venv /opt/venv
COPY --from=model /model/model.safetensors /opt/fashion-serve/model.safetensors
# One uvicorn worker per core (WEB_CONCURRENCY overrides), each with one torch thread, so the
# workers never fight over cores. A baked-in model that will not load is a broken image: exit.
# fashion-serve (app/cli.py) is uvicorn with the connection limits, and it empties the metrics
# directory before the workers start.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    FASHION_MODEL_PATH=/opt/fashion-serve/model.safetensors \
    FASHION_REQUIRE_MODEL=true \
    FASHION_TORCH_THREADS=1
# Load the model as the server will (checksums, a warm-up forward pass on the stripped torch) and
# refuse a model below MIN_ACCURACY: an untrained or `--dry-run` model never ships. The same run
# writes bytecode for exactly the modules serving imports: about 30 MB instead of 117 MB for all
# of site-packages, while a read-only container that had none would compile torch in every worker
# at every start (import time 2-3x longer).
RUN PYTHONDONTWRITEBYTECODE='' python -c "import sys, torch, uvicorn, uvicorn.main, uvicorn.supervisors, PIL.Image, app.cli, app.predictor; \
uvicorn.Config('app.main:app', http=app.cli.DEFAULTS['http']).load(); PIL.Image.init(); \
import prometheus_client.multiprocess; \
m = app.predictor.Predictor.load(sys.argv[1], torch.device('cpu')).metadata; acc = m.test_accuracy or 0.0; \
print(f'model {m.weights_sha256[:12]}: test accuracy {acc:.4f}'); \
sys.exit(None if acc >= float(sys.argv[2]) else f'model test accuracy {acc} is below MIN_ACCURACY {sys.argv[2]}')" \
    "$FASHION_MODEL_PATH" "$MIN_ACCURACY"
# After the check above, which must not write metrics files: fashion-serve empties this directory at start.
ENV PROMETHEUS_MULTIPROC_DIR=/tmp/fashion-metrics
# Numeric, so a runtime can verify non-root (Kubernetes runAsNonRoot) without reading /etc/passwd.
USER 10001:10001
WORKDIR /opt/fashion-serve
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
# nproc counts the CPUs this container may run on; a CPU quota (docker run --cpus) lowers it further.
CMD ["/bin/sh", "-c", "n=$(nproc); [ -r /sys/fs/cgroup/cpu.max ] && read q p < /sys/fs/cgroup/cpu.max && [ \"$q\" != max ] && n=$(( (q + p - 1) / p < n ? (q + p - 1) / p : n )); exec fashion-serve --port 8000 --workers \"${WEB_CONCURRENCY:-$n}\""]
