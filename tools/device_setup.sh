# Source on the device machine: installs carried wheels and facefleet (no deps), points at
# the carried models and test data. Usage: . tools/device_setup.sh
set -e
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
python3 -m pip install -q --no-deps --no-index .carry/wheels/*.whl 2>&1 | grep -v WARN || true
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v WARN || true
export FACEFLEET_MODEL_DIR=$PWD/.carry/models FACEFLEET_SHARED_DATA=$PWD/.carry/data
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'tv', torchvision.__version__, 'gpus', torch.cuda.device_count())"
set +e
