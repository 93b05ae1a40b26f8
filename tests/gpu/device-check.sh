#!/bin/bash
# The CUDA path of the engine and the operator, run on a lent GPU machine (see docs/inference.md).
#
#   bash tests/gpu/device-check.sh wheels   # here: the packages the GPU image lacks, as cp312 wheels, into .whl/
#   bash tests/gpu/device-check.sh run      # there: install them, then pytest tests/inference tests/operator
#
# The image has torch (CUDA), numpy, accelerate, safetensors, pytest and hypothesis; everything else
# travels at the versions of this checkout's .venv (transformers as pinned, so profiles hash alike).
# With CUDA present the engine fixtures and the operator (no `device` in its config) take the GPU,
# and test_gpu_generation_verifies_on_the_cpu_and_back checks GPU <-> CPU agreement.
set -euo pipefail
cd "$(dirname "$0")/../.."

CARRIED=(alembic annotated-types bitarray ckzg coincurve cytoolz eth-abi eth-account eth-hash eth-keyfile
  eth-keys eth-rlp eth-typing eth-utils grpcio grpcio-health-checking grpcio-reflection hexbytes httpcore2
  httpx2 huggingface-hub mako parsimonious protobuf py-ecc pycryptodome pydantic pydantic-core
  pydantic-settings python-dotenv pyunormalize rlp sqlalchemy tokenizers transformers truststore
  typing-inspection web3 websockets)

wheels() {
  local pins=() name version
  for name in "${CARRIED[@]}"; do
    version=$(.venv/bin/python -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")
    pins+=("$name==$version")
  done
  rm -rf .whl && mkdir .whl
  .venv/bin/pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d .whl "${pins[@]}"
  echo "$(du -sh .whl | cut -f1) in .whl/: carry .whl and the generated avs/rpc/{aggregator,common,operator,.generated}"
}

run() {
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  # The operator binary test starts a subprocess with its own environment: a .pth file (first on
  # sys.path) makes the carried packages and this checkout importable there too.
  local site
  site=$(python3 -c 'import site; print(site.getsitepackages()[0])')
  echo "import sys; sys.path[:0] = ['/tmp/site', '$PWD', '$PWD/operator', '$PWD/aggregator']" >"$site/avs-device-check.pth"
  export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import sys, torch, transformers; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name(0), 'transformers', transformers.__version__)"
  # test_registration needs anvil, which the image does not have.
  python3 -m pytest tests/inference tests/operator --ignore tests/operator/test_registration.py -p no:cacheprovider -q -rs
}

case "${1:-}" in
  wheels) wheels ;;
  run) run ;;
  *) echo "usage: $0 wheels|run" >&2; exit 2 ;;
esac
