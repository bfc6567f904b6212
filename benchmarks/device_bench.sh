#!/usr/bin/env bash
# The GPU measurements of docs/benchmarks.md, one mode per table. Run from the repository root on the
# GPU host: bash benchmarks/device_bench.sh core|engine|files|scaling|ab
# Results (the bench's JSON and printed tables) go to $OUT (default ./bench-out).
#
# Settings through the environment: IMAGES (corpus size), GPUS (scaling: e.g. 1,2,4), REPEAT (scaling:
# the corpus read K times), OLD (ab: an older tree, e.g. `git archive REV facefleet | tar -x -C old`).
# On a machine without network access, a .carry/ folder beside this script's repository may hold
# wheels (.carry/wheels), the model files (.carry/models) and the shared photos (.carry/data).
set -u
OUT=${OUT:-bench-out}; mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0
if [ -d .carry/wheels ]; then  # offline machine: the carried wheels, models and photos
  python3 -m pip install -q --no-deps --no-index .carry/wheels/*.whl 2>&1 | grep -v WARN
  python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v WARN
  export FACEFLEET_MODEL_DIR=$PWD/.carry/models FACEFLEET_SHARED_DATA=$PWD/.carry/data
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'gpus', torch.cuda.device_count())"

case "${1:-}" in
core)  # the networks alone and the pipeline on decoded batches (tables "Networks" and "Pipeline")
  python3 -m pytest -q -p no:cacheprovider tests/test_models_tflite.py tests/test_detect.py tests/test_mesh.py \
    -k "cuda or compiled" 2>&1 | tail -2
  facefleet bench-core --device cuda --dtypes fp32,fp16 --net-batches 64,512,1024 --batches 32,128,512 \
    --what networks,pipeline,agreement --json "$OUT/core.json"
  ;;
engine)  # the engine against its baselines: the photo corpus (default), then one face per 1080p frame
  facefleet bench --images "${IMAGES:-8000}" --baselines engine,loop,litert --baseline-seconds 25 \
    --json "$OUT/engine_photos.json"
  facefleet bench --images "${IMAGES:-8000}" --corpus-kind synthetic --baselines engine \
    --json "$OUT/engine_one_face.json"
  ;;
files)  # an OBJ mesh and a texture PNG per face
  facefleet bench --images "${IMAGES:-4000}" --baselines engine --formats obj,png --json "$OUT/files.json"
  ;;
scaling)  # 1..N GPUs of one host on one corpus; REPEAT=k makes the run long enough for every worker
  facefleet bench --images "${IMAGES:-16000}" --repeat "${REPEAT:-1}" --baselines engine \
    --gpus-scaling "${GPUS:-1,2,4}" --json "$OUT/scaling.json"
  ;;
ab)  # this tree against an older one ($OLD) on one corpus and machine, this tree twice (its spread is the noise)
  OLD=${OLD:-$PWD/.carry/old}; [ -d "$OLD/facefleet" ] || { echo "no old tree at $OLD" >&2; exit 2; }
  python3 -c "from facefleet.bench.corpus import make_photo_corpus as m; m('/tmp/ffcorpus', ${IMAGES:-8000})"
  here=$PWD
  for v in new old new2; do
    if [ $v = old ]; then cd /tmp; export PYTHONPATH=$OLD; fi  # the old package first on the path
    facefleet bench --corpus /tmp/ffcorpus --baselines engine --json "$OUT/ab_$v.json" 2>&1 | grep "facefleet run"
    if [ $v = old ]; then cd "$here"; unset PYTHONPATH; fi
  done
  python3 benchmarks/bench_stages.py "$OUT"/ab_*.json
  ;;
*) echo "usage: $0 core|engine|files|scaling|ab" >&2; exit 2 ;;
esac
