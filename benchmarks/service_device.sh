#!/usr/bin/env bash
# The GPU measurements of docs/benchmarks.md "## Service", in one call on the GPU host (repository root):
#   CLIENTS=1,4,16,64,256 SECONDS_PER=10 IMAGES=512 bash benchmarks/service_device.sh
# facefleet serve on this host's GPU under 1..256 closed-loop clients sending 1080p JPEGs of the photo
# corpus (python -m facefleet.bench.service), and facefleet run on the same images first (--baseline-run).
# The JSON goes to $OUT (default ./bench-out). On an offline machine .carry/s/ may hold wheels (whl/),
# the model files (models/) and the shared data (data/): they are installed / pointed at first.
set -u
OUT=${OUT:-bench-out}; mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
export PYTHONUNBUFFERED=1
if [ -d .carry/s/whl ] && [ -z "${NO_INSTALL:-}" ]; then
  python3 -m pip install -q --no-deps --no-index .carry/s/whl/*.whl 2>&1 | grep -v WARN
  python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v WARN
  export FACEFLEET_MODEL_DIR=$PWD/.carry/s/models FACEFLEET_SHARED_DATA=$PWD/.carry/s/data
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -m facefleet.bench.service --clients "${CLIENTS:-1,4,16,64,256}" --seconds "${SECONDS_PER:-10}" \
  --images "${IMAGES:-512}" --client-procs "${CLIENT_PROCS:-6}" ${BASELINE---baseline-run} \
  --json "$OUT/service.json" -- ${SERVE_ARGS:-}
