#!/usr/bin/env bash
# The measurements of docs/benchmarks.md that need GPUs, as run on the lent device machines.
# Usage (repository root, on the GPU host): bash tools/device_bench.sh core|engine|scaling|workers|decode|profile|probe|ab|compile|gil|decodeproc|verify|waits|hostprof|decodecfg|decthreads|backends|lean|slots|filesab|mps|decpipe|share|syncs|fused|netthreads
# Results go to $OUT (default ./bench-out).
OUT=${OUT:-bench-out}; mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
. tools/device_setup.sh
corpus() {  # corpus N DIR: N real-face 1080p JPEGs (q90, one face each), as facefleet bench makes them
  python3 -c "from facefleet.bench.corpus import make_corpus as m; m('$2', $1, resolution=(1920, 1080), faces_per_image=(1, 1))"
}
engine_row() {  # engine_row PREFIX NAME: the engine on /tmp/ffcorpus with /tmp/NAME.toml (when there) ->
  # $OUT/PREFIX_NAME.json (PREFIX_NAME2.json for a second run of NAME); prints its row, named NAME
  local cfg=() json="$OUT/$1_$2.json"
  [ -f "/tmp/$2.toml" ] && cfg=(--config "/tmp/$2.toml")
  [ -f "$json" ] && json="$OUT/$1_${2}2.json"
  facefleet bench --corpus /tmp/ffcorpus --baselines engine "${cfg[@]}" --json "$json" 2>&1 \
    | grep "facefleet run  " | sed "s/^/$2: /"
}
case "$1" in
core)
  python3 -m pytest -q -p no:cacheprovider tests/test_models_tflite.py tests/test_io_gpu_decode.py \
    tests/test_detect.py tests/test_mesh.py tests/test_texture.py 2>&1 | tail -4
  facefleet bench-core --device cuda --dtypes fp32,fp16 --net-batches 64,512,1024 --batches 1,32,128,512 \
    --what networks,pipeline --json "$OUT/core.json"
  facefleet bench-core --device cuda --dtypes fp16 --batches 128,512 --what pipeline --texture \
    --json "$OUT/core_texture.json"
  ;;
engine)
  facefleet bench --images "${IMAGES:-8000}" --resolution 1920x1080 --baselines engine,loop,litert \
    --formats parquet --baseline-seconds 25 --json "$OUT/bench.json"
  # per-image OBJ + texture PNG files are much slower: a smaller corpus of the same kind
  facefleet bench --images "${FILES_IMAGES:-2000}" --resolution 1920x1080 --baselines engine \
    --formats obj,png --json "$OUT/bench_files.json"
  ;;
scaling)  # REPEAT=k: the engine runs over the corpus k times (facefleet bench --repeat: trees of symlinks),
  # long enough that every worker runs together for a while although they come up seconds apart
  facefleet bench --images "${IMAGES:-16000}" --resolution 1920x1080 --repeat "${REPEAT:-1}" --baselines engine \
    --gpus-scaling "${GPUS:-1,2,4}" --json "$OUT/scaling.json"
  [ "${SIM:-1}" = 0 ] || facefleet bench --baselines none --simulate-workers 1,2,4,8 \
    --sim-rate "${SIM_RATE:-3000}" --json "$OUT/simulate.json"
  ;;
decode)  # GPU JPEG decoders, and the engine with each (docs/benchmarks.md, "GPU JPEG decoders")
  corpus ${IMAGES:-8000} /tmp/ffcorpus
  python3 -m pytest -q -p no:cacheprovider tests/test_io_gpu_decode.py 2>&1 | tail -3
  python3 tools/probe_decode.py --corpus /tmp/ffcorpus --images 1024 --chunks "${CHUNKS:-16,32,128}" 2>&1 | tee "$OUT/probe_decode.txt"
  python3 tools/probe_decode.py --corpus /tmp/ffcorpus --steps --chunks 32,128 2>&1 | tee -a "$OUT/probe_decode.txt"
  facefleet bench --corpus /tmp/ffcorpus --baselines engine --decoders "${DECODERS:-nvjpeg,nvimgcodec}" \
    --gpu-workers "${GPU_WORKERS:-1,2}" --json "$OUT/decoders.json"
  ;;
workers)  # worker processes per GPU, one corpus for every row (docs/benchmarks.md, "Workers per GPU")
  corpus ${IMAGES:-12000} /tmp/ffcorpus
  facefleet bench --corpus /tmp/ffcorpus --baselines engine --gpu-workers "${GPU_WORKERS:-1,2,3}" \
    --formats parquet ${FILES:+--formats obj,png} --json "$OUT/workers.json"
  ;;
profile)  # where the time of a GPU worker goes (tools/profile_gpu.py + a sampled engine run)
  corpus ${IMAGES:-4000} /tmp/ffcorpus
  python3 tools/profile_gpu.py --corpus /tmp/ffcorpus --images 1024 --batches "${BATCHES:-64,128,256}" \
    ${TRACE:+--trace} 2>&1 | tee "$OUT/profile.txt"
  for b in ${BATCH:-128}; do
    rm -rf /tmp/ffrun
    FACEFLEET_STACK_SAMPLES="$OUT/stacks-b$b" /usr/bin/time -v facefleet run /tmp/ffcorpus -o /tmp/ffrun \
      --batch-size "$b" 2>&1 | grep -v "^\s.*: 0$" | tail -25
    cp /tmp/ffrun/report.json "$OUT/report-b$b.json" 2>/dev/null
  done
  ;;
probe)  # one batch alone and beside a decoder thread; each network in each memory layout
  corpus 512 /tmp/ffcorpus
  python3 tools/probe_layouts.py --device cuda 2>&1 | tee "$OUT/layouts.txt"
  python3 tools/probe_stages.py --corpus /tmp/ffcorpus --reps 10 --contend decoder 2>&1 | tee "$OUT/probe_stages.txt"
  ;;
ab)  # this tree against an older one on one corpus and machine (the lent machines differ by 10-20 %)
  # before: git archive REV facefleet | tar -x -C .carry/old   (the device copy has no .git)
  OLD=${OLD:-$PWD/.carry/old}; [ -d "$OLD/facefleet" ] || { echo "no old tree at $OLD" >&2; exit 2; }
  corpus ${IMAGES:-8000} /tmp/ffcorpus
  for v in new old new2; do  # this tree twice: its spread shows the noise
    if [ $v = old ]; then here=$PWD; cd /tmp; export PYTHONPATH=$OLD; fi  # the old package first on the path
    facefleet bench --corpus /tmp/ffcorpus --baselines engine --gpu-workers "${GPU_WORKERS:-1,2}" \
      --json "$OUT/ab_$v.json" 2>&1 | grep "facefleet run ("
    if [ $v = old ]; then cd "$here"; unset PYTHONPATH; fi
  done
  python3 tools/bench_stages.py "$OUT"/ab_*.json
  ;;
gil)  # what a worker's other threads cost its device thread (docs/benchmarks.md, seventh session)
  corpus 1024 /tmp/ffcorpus
  python3 tools/probe_gil.py --corpus /tmp/ffcorpus 2>&1 | tee "$OUT/gil.txt"
  ;;
decodeproc)  # reading and decoding in a child process against threads of the worker, one machine
  corpus ${IMAGES:-8000} /tmp/ffcorpus
  python3 -m pytest -q -p no:cacheprovider tests/test_decode_proc.py 2>&1 | tail -2
  printf '[gpu]\ndecode_process = false\n' > /tmp/threads.toml
  for v in proc threads proc; do  # twice: the spread of one setting shows the noise
    cfg=""; [ $v = threads ] && cfg="--config /tmp/threads.toml"
    facefleet bench --corpus /tmp/ffcorpus --baselines engine --gpu-workers "${GPU_WORKERS:-1,2}" $cfg \
      ${FILES:+--formats obj,png} --json "$OUT/decodeproc_$v.json" 2>&1 | grep "facefleet run"
  done
  ;;
verify)  # one call for what the seventh session built after its device time was spent: GPU tests, the
  # first-batch and loop figures after the gather's single compilation, OBJ + PNG with 1 and 2 workers
  # and a profile of it (where a textured batch's 184 ms go), the texture ring's room in /dev/shm
  df -h /dev/shm | tail -1
  python3 tools/probe_texture_transport.py --processes 8 --reps 3 2>&1 | tail -6
  corpus ${IMAGES:-8000} /tmp/ffcorpus; corpus 1500 /tmp/ffsmall
  python3 -m pytest -q -p no:cacheprovider tests/test_decode_proc.py tests/test_mesh.py tests/test_engine_queue.py \
    -k "cuda or decode or compiled or manifest or schema" 2>&1 | tail -2
  facefleet bench --corpus /tmp/ffcorpus --baselines engine,loop --baseline-seconds 10 --json "$OUT/verify.json" \
    2>&1 | grep -A4 "^baseline"
  facefleet bench --corpus /tmp/ffsmall --baselines engine --formats obj,png --gpu-workers 1,2 \
    --json "$OUT/verify_files.json" 2>&1 | grep "facefleet run"
  rm -rf /tmp/ffrun
  FACEFLEET_TORCH_PROFILE="$OUT/files-profile" facefleet run /tmp/ffsmall -o /tmp/ffrun --formats obj,png --quiet \
    2>&1 | tail -2
  gzip -f "$OUT"/files-profile/*.json 2>/dev/null; tar -C "$OUT" -czf "$OUT/files-profile.tgz" files-profile && rm -rf "$OUT/files-profile"
  ;;
waits)  # where a worker's device thread waits (stages wait_input / wait_writers), this tree against
  # the one before (OLD, as for ab); recompilations logged; OBJ + PNG written to disk and to /dev/shm
  OLD=${OLD:-$PWD/.carry/old}; [ -d "$OLD/facefleet" ] || { echo "no old tree at $OLD" >&2; exit 2; }
  df -h /tmp /dev/shm | tail -2
  dd if=/dev/zero of=/tmp/ddtest bs=1M count=4096 conv=fdatasync 2>&1 | tail -1; rm -f /tmp/ddtest
  corpus ${IMAGES:-8000} /tmp/ffcorpus
  export TORCH_LOGS=recompiles
  for v in new old new2; do
    if [ $v = old ]; then here=$PWD; cd /tmp; export PYTHONPATH=$OLD; fi
    facefleet bench --corpus /tmp/ffcorpus --baselines engine --gpu-workers 1 --json "$OUT/waits_$v.json" \
      > "$OUT/waits_$v.txt" 2>&1
    grep "facefleet run (" "$OUT/waits_$v.txt"; echo "$v: $(grep -c 'Recompiling' "$OUT/waits_$v.txt") recompilations"
    if [ $v = old ]; then cd "$here"; unset PYTHONPATH; fi
  done
  unset TORCH_LOGS
  for w in /tmp/ffw /dev/shm/ffw; do
    mkdir -p $w
    facefleet bench --corpus /tmp/ffcorpus --baselines engine --formats obj,png --work-dir $w \
      --json "$OUT/files_$(basename $(dirname $w)).json" 2>&1 | grep "facefleet run"
    rm -rf $w
  done
  python3 tools/bench_stages.py "$OUT"/*.json
  ;;
hostprof)  # where the device thread's time goes (inclusive Python stacks), recompilations, then the
  # engine without the sampler (Parquet, and OBJ + PNG), steady rates from the batches' completions
  corpus ${IMAGES:-8000} /tmp/ffcorpus
  TORCH_LOGS=recompiles FACEFLEET_STACK_SAMPLES="$OUT/stacks" facefleet bench --corpus /tmp/ffcorpus --baselines engine \
    --json "$OUT/hostprof_sampled.json" > "$OUT/hostprof_sampled.txt" 2>&1
  grep "facefleet run" "$OUT/hostprof_sampled.txt"; echo "$(grep -c 'Recompiling' "$OUT/hostprof_sampled.txt") recompilations"
  grep -A3 "triggered by" "$OUT/hostprof_sampled.txt" | grep -- "- [0-9]" | cut -c1-250
  facefleet bench --corpus /tmp/ffcorpus --baselines engine --formats parquet --formats obj,png \
    --json "$OUT/hostprof.json" 2>&1 | grep "facefleet run"
  python3 tools/bench_stages.py "$OUT"/hostprof*.json
  ;;
decodecfg)  # the decoders alone (GPU: tools/probe_decode.py; the host's cores: Pillow on threads), then
  # the decoder process's settings on one corpus: default, decode_chunk 128, three batches in flight
  # (the stages split decoding from the copy into the slot)
  corpus ${IMAGES:-8000} /tmp/ffcorpus
  : > /tmp/default.toml
  printf '[gpu]\ndecode_chunk = 128\n' > /tmp/chunk128.toml
  printf '[gpu]\nbatches_in_flight = 3\n' > /tmp/inflight3.toml
  python3 tools/probe_decode.py --corpus /tmp/ffcorpus --images 1024 --chunks 32,128 2>&1 | grep -v "^\s*$" | tail -8
  python3 - <<'PY'  # what the host's cores decode (Pillow, libjpeg-turbo): threads release the GIL
import glob, os, time
from concurrent.futures import ThreadPoolExecutor
from facefleet.io.decode import decode_image
blobs = [open(f, "rb").read() for f in sorted(glob.glob("/tmp/ffcorpus/**/*.jpg", recursive=True))[:1024]]
for n in (1, 4, 8, 12):
    with ThreadPoolExecutor(n) as ex:
        t = time.perf_counter(); list(ex.map(lambda b: decode_image(b, "x.jpg"), blobs[: 64 * n])); dt = time.perf_counter() - t
    print(f"Pillow on {n} threads: {64 * n / dt:.0f} img/s (1080p JPEG q90)")
PY
  for c in default chunk128 inflight3; do engine_row cfg $c; done
  python3 tools/bench_stages.py "$OUT"/cfg_*.json
  ;;
decthreads)  # two nvJPEG decode threads in the decoder process against the default (nvImageCodec, one)
  corpus ${IMAGES:-6000} /tmp/ffcorpus
  printf '[gpu]\ndecoder = "nvjpeg"\ndecode_threads = 2\n' > /tmp/nvjpeg2.toml
  : > /tmp/default.toml
  for c in nvjpeg2 default; do engine_row thr $c; done
  python3 tools/bench_stages.py "$OUT"/thr_*.json
  ;;
backends)  # nvImageCodec's backends (the JPEG engine, the host's cores in shares) and host threads: alone,
  # then in the engine on one corpus with the GPU's utilisation per engine sampled by nvidia-smi dmon
  corpus ${IMAGES:-12000} /tmp/ffcorpus
  python3 tools/probe_decode.py --corpus /tmp/ffcorpus --images 1024 --chunks 32,128 \
    --backends "${BACKENDS:-auto;hw,cpu;hw:0.9,cpu;hw:0.8,cpu}" --cpu-threads 4,12 2>&1 | tee "$OUT/backends.txt"
  : > /tmp/default.toml
  printf '[gpu]\ndecode_backends = "hw,cpu"\n' > /tmp/hw.toml
  printf '[gpu]\ndecode_backends = "hw:0.85,cpu"\ndecode_cpu_threads = 12\n' > /tmp/hwcpu.toml
  printf '[gpu]\ndecode_chunk = 128\n' > /tmp/chunk128.toml
  printf '[gpu]\nbatch_size = 256\n' > /tmp/batch256.toml
  nvidia-smi dmon -s u -o T > "$OUT/dmon.txt" 2>&1 &
  DMON=$!
  for c in ${CONFIGS:-default hw hwcpu chunk128 batch256 default}; do
    echo "== $c $(date +%T)" >> "$OUT/dmon.txt"
    engine_row be $c
  done
  kill $DMON
  python3 tools/bench_stages.py "$OUT"/be_*.json
  ;;
lean)  # decoding beside the networks: in another process, or on a lean thread of their process
  corpus 1024 /tmp/ffcorpus
  python3 tools/probe_lean_decode.py --corpus /tmp/ffcorpus --seconds "${SECONDS_PER_ROW:-6}" 2>&1 | tee "$OUT/lean.txt"
  ;;
slots)  # this tree (decoding straight into the slots) against OLD, then settings of this tree, one corpus
  OLD=${OLD:-$PWD/.carry/old}; [ -d "$OLD/facefleet" ] || { echo "no old tree at $OLD" >&2; exit 2; }
  corpus ${IMAGES:-10000} /tmp/ffcorpus
  python3 -m pytest -q -p no:cacheprovider tests/test_decode_proc.py tests/test_io_gpu_decode.py 2>&1 | tail -2
  : > /tmp/new.toml; : > /tmp/old.toml; : > /tmp/new2.toml
  printf '[gpu]\nbatch_size = 192\nbatches_in_flight = 2\n' > /tmp/b192.toml
  printf '[gpu]\ndecode_backends = "hw,cpu"\n' > /tmp/hw.toml
  for v in ${CONFIGS:-new old b192 hw new2}; do
    if [ $v = old ]; then here=$PWD; cd /tmp; export PYTHONPATH=$OLD; fi
    engine_row slots $v
    if [ $v = old ]; then cd "$here"; unset PYTHONPATH; fi
  done
  python3 tools/bench_stages.py "$OUT"/slots_*.json
  ;;
filesab)  # OBJ + texture PNG files: this tree against OLD on one corpus
  OLD=${OLD:-$PWD/.carry/old}; [ -d "$OLD/facefleet" ] || { echo "no old tree at $OLD" >&2; exit 2; }
  corpus ${IMAGES:-8000} /tmp/ffcorpus
  for v in ${CONFIGS:-new old}; do
    if [ $v = old ]; then here=$PWD; cd /tmp; export PYTHONPATH=$OLD; fi
    facefleet bench --corpus /tmp/ffcorpus --baselines engine --formats obj,png --json "$OUT/files_$v.json" \
      2>&1 | grep "facefleet run " | sed "s/^/$v: /"
    if [ $v = old ]; then cd "$here"; unset PYTHONPATH; fi
  done
  python3 tools/bench_stages.py "$OUT"/files_*.json
  ;;
decpipe)  # the decoder process's chunks in flight: two decode threads (nvImageCodec), one chunk of 128, repeated
  corpus ${IMAGES:-8000} /tmp/ffcorpus
  : > /tmp/d.toml; : > /tmp/d2.toml
  printf '[gpu]\ndecode_threads = 2\n' > /tmp/t2.toml; cp /tmp/t2.toml /tmp/t2b.toml
  printf '[gpu]\ndecode_chunk = 128\n' > /tmp/c128.toml
  for v in ${CONFIGS:-d t2 c128 d2 t2b}; do engine_row dp $v; done
  python3 tools/bench_stages.py "$OUT"/dp_*.json
  ;;
mps)  # CUDA MPS: the decoder process and the networks' process share the SMs instead of taking turns
  corpus ${IMAGES:-10000} /tmp/ffcorpus
  engine_row mps off
  python3 tools/probe_lean_decode.py --corpus /tmp/ffcorpus --seconds 5 --chunks 32 2>&1 | tee "$OUT/lean_off.txt"
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
  mkdir -p $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_LOG_DIRECTORY
  nvidia-cuda-mps-control -d && echo "MPS daemon started"
  python3 tools/probe_lean_decode.py --corpus /tmp/ffcorpus --seconds 5 --chunks 32 2>&1 | tee "$OUT/lean_on.txt"
  engine_row mps on
  engine_row mps on2
  echo quit | nvidia-cuda-mps-control; sleep 2
  unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
  engine_row mps off2
  cat /tmp/mps-log/control.log 2>/dev/null | tail -5
  python3 tools/bench_stages.py "$OUT"/mps_*.json
  ;;
share)  # what the decoder process needs of the SMs and gets beside the networks (planar RGB, from pinned memory, luma only,
  # torchvision's nvJPEG), then the engine: default (two decode threads), three with four slots, default again
  corpus ${IMAGES:-8000} /tmp/ffcorpus
  python3 tools/probe_decode_share.py --corpus /tmp/ffcorpus --seconds "${SECONDS_PER_ROW:-5}" \
    --modes "${MODES:-rgb,pinned,gray,tv}" --threads "${THREADS:-1,2}" 2>&1 | tee "$OUT/share.txt"
  [ "${ENGINE:-1}" = 0 ] && exit 0
  : > /tmp/d.toml; : > /tmp/d2.toml
  printf '[gpu]\ndecode_threads = 3\nbatches_in_flight = 4\n' > /tmp/t3.toml
  for v in ${CONFIGS:-d t3 d2}; do engine_row sh $v; done
  python3 tools/bench_stages.py "$OUT"/sh_*.json
  ;;
syncs)  # where one batch makes the networks' thread wait for the device, and its profiled trace
  corpus 512 /tmp/ffcorpus
  python3 tools/probe_stages.py --corpus /tmp/ffcorpus --reps 5 --syncs --trace "$OUT/stages-trace.json.gz" 2>&1 \
    | tee "$OUT/stages.txt"
  ;;
fused)  # this tree against OLD (mesh crops as one compiled kernel, the letterboxes' cast compiled): GPU
  # tests, one batch's kernels and wall time, compiled against eager pipeline, the engine on one corpus
  OLD=${OLD:-$PWD/.carry/old}; [ -d "$OLD/facefleet" ] || { echo "no old tree at $OLD" >&2; exit 2; }
  corpus ${IMAGES:-6000} /tmp/ffcorpus
  [ "${TESTS:-1}" = 0 ] || python3 -m pytest -q -p no:cacheprovider tests/test_mesh.py tests/test_detect.py \
    tests/test_pipeline.py -k "cuda or compiled or graphs" 2>&1 | tail -2
  here=$PWD
  for v in ${PROBES:-old new}; do  # the first probe of a call ran slower in every step (eleventh session)
    [ $v = old ] && export PYTHONPATH=$OLD
    (cd /tmp && python3 "$here/tools/probe_stages.py" --corpus /tmp/ffcorpus --reps 10 --trace "$OUT/stages-$v.json.gz" \
      > "$OUT/stages-$v.txt" 2>&1)
    grep -E "^wall|^detect  |^mesh  |whole-frame|mesh: crops" "$OUT/stages-$v.txt" | sed "s/^/$v: /"
    unset PYTHONPATH
  done
  [ "${AGREE:-1}" = 0 ] || python3 tools/probe_compile_agreement.py --corpus /tmp/ffcorpus --images 128 2>&1 | tail -3
  : > /tmp/new.toml; : > /tmp/old.toml
  for v in ${CONFIGS:-new old new old}; do
    if [ $v = old ]; then cd /tmp; export PYTHONPATH=$OLD; fi
    engine_row fu $v
    if [ $v = old ]; then cd "$here"; unset PYTHONPATH; fi
  done
  python3 tools/bench_stages.py "$OUT"/fu_*.json
  ;;
netthreads)  # two networks' threads per worker against one (each its own batch and CUDA stream), one corpus:
  # the probe of threads in one process (ENGINE=0: only it), the same manifests both ways (1,024 images,
  # recompilations counted), then the engine rows
  corpus ${IMAGES:-5000} /tmp/ffcorpus
  : > /tmp/n1.toml
  printf '[gpu]\nnetwork_threads = 2\n' > /tmp/n2.toml
  printf '[gpu]\nnetwork_threads = 2\nbatches_in_flight = 4\n' > /tmp/n2s4.toml
  python3 tools/probe_threads.py --corpus /tmp/ffcorpus --batches "${BATCHES:-4}" 2>&1 | tee "$OUT/probe_threads.txt"
  [ "${ENGINE:-1}" = 0 ] && exit 0
  ls /tmp/ffcorpus/*.jpg | head -1024 > /tmp/first.txt
  for v in n1 n2; do
    TORCH_LOGS=recompiles facefleet run /tmp/first.txt -o /tmp/run_$v --config /tmp/$v.toml --quiet > "$OUT/run_$v.txt" 2>&1
    echo "$v: exit $?, $(grep -c 'Recompiling' "$OUT/run_$v.txt") recompilations"
  done
  python3 tools/compare_runs.py /tmp/run_n1 /tmp/run_n2
  for v in ${CONFIGS:-n1 n2 n2s4 n1 n2}; do engine_row nt $v; done
  python3 tools/bench_stages.py "$OUT"/nt_*.json
  ;;
compile)  # torch.compile's kernels against the eager ones: kernel time, agreement, engine (one machine)
  corpus ${IMAGES:-8000} /tmp/ffcorpus
  python3 -m pytest -q -p no:cacheprovider tests/test_models_tflite.py tests/test_mesh.py \
    -k "compiled or cuda_graphs_replay or on_cuda" 2>&1 | tail -3
  python3 tools/probe_compile_agreement.py --corpus /tmp/ffcorpus 2>&1 | tail -3 | tee "$OUT/compile_agreement.txt"
  for c in 1 0; do
    FACEFLEET_COMPILE=$c python3 tools/probe_stages.py --corpus /tmp/ffcorpus --reps 10 2>&1 \
      | grep "Self CUDA time total" | sed "s/^/FACEFLEET_COMPILE=$c, 10 batches: /" | tee -a "$OUT/compile_kernels.txt"
    FACEFLEET_COMPILE=$c facefleet bench --corpus /tmp/ffcorpus --baselines engine --gpu-workers "${GPU_WORKERS:-1,2}" \
      --json "$OUT/compile_$c.json" 2>&1 | grep "facefleet run ("
  done
  ;;
*) echo "usage: $0 core|engine|scaling|workers|decode|profile|probe|ab|compile|gil|decodeproc|verify|waits|hostprof|decodecfg|decthreads|backends|lean|slots|filesab|mps|decpipe|share|syncs|fused|netthreads" >&2; exit 2 ;;
esac
