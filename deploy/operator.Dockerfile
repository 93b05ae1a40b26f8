# The operator image used by deploy/docker-compose.operator.yml (CPU build of torch; for GPUs,
# start from a CUDA base image and install the matching torch wheel instead).
# Build from the repository root: docker build -f deploy/operator.Dockerfile -t verifiable-inference-avs-operator .
FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY avs ./avs
COPY operator ./operator
COPY aggregator ./aggregator
COPY proto ./proto
# The gRPC modules are generated from proto/ (git-ignored, as `make proto` does) before the install.
# torch from PyTorch's CPU index: PyPI's Linux wheel is the CUDA build (gigabytes of libraries).
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
    && pip install --no-cache-dir 'grpcio-tools>=1.66' \
    && python -m grpc_tools.protoc -I proto --python_out=. --grpc_python_out=. $(find proto -name '*.proto') \
    && find avs/rpc -mindepth 1 -type d -not -name __pycache__ -exec touch {}/__init__.py \; \
    && pip install --no-cache-dir '.[operator]'

# Runs as an unprivileged user; /data holds the slashing-protection database (keep it on a volume).
RUN useradd --create-home --uid 10001 avs && mkdir -p /data && chown avs /data
USER avs
WORKDIR /data
ENV HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
EXPOSE 50051 9091 9092
ENTRYPOINT ["avs-operator"]
CMD ["run", "--config", "/config/operator.yaml"]
