# Shipyard: `make demo` and `make test` set everything up on a fresh clone (idempotent).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.shipyard-installed
# Python packages beyond the project's own extras: CPU-only builds of XGBoost and PyTorch
# (torch 2.13.0 is the CPU wheel this machine kind keeps on disk; a bare `torch` pulls GBs of CUDA).
EXTRA_PACKAGES := xgboost-cpu torch==2.13.0
# Debian packages the suite needs: curl for the demo, R for the R runtime (rpart for its tests).
APT_PACKAGES := curl r-base-core r-cran-rpart chromium

.PHONY: demo test bench install clean help grpc-stubs

help:
	@echo "make demo   - set up .venv, train and package a model, test it, serve it, query it (V1 and V2), build its image context"
	@echo "make test   - set up .venv and run the whole test suite"
	@echo "make bench  - benchmark Shipyard against KServe and MLServer, training launch, and the dataset cache against a slow source (docs/performance.md)"
	@echo "make clean  - remove .venv and caches"

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "Shipyard needs Python >= 3.10; set PYTHON=python3.X")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml Makefile | $(BIN)/python
	@bash scripts/apt-install.sh $(APT_PACKAGES)
	$(BIN)/python -m pip install --quiet $(EXTRA_PACKAGES)
	$(BIN)/python -m pip install --quiet -e '.[sklearn,lightgbm,onnx,pytorch,huggingface,train,data,explain,tracing,dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	@bash scripts/demo.sh

test: $(STAMP)
	$(BIN)/python -m pytest -q

# `make bench`: Shipyard vs KServe and MLServer, side by side (docs/performance.md). Sets up wrk and the
# peers' venvs (benchmarks/.venvs) first. BENCH_SECONDS=3 make bench is the quick mode; each server's
# flags are in benchmarks/config.toml (or BENCH_SHIPYARD_ARGS="--workers 2" make bench).
BENCH_SETUP := benchmarks/setup.sh
BENCH_RUN   := benchmarks/run.py

bench: $(STAMP)
	@bash $(BENCH_SETUP) $(BIN)/python
	$(BIN)/python $(BENCH_RUN)
	$(BIN)/python benchmarks/train_launch.py --runs 5 --nproc 2
	$(BIN)/python benchmarks/data_cache.py --no-fail --doc docs/performance.md
	$(BIN)/python benchmarks/cold_start.py --runs 5 --no-fail
	$(BIN)/python benchmarks/batch.py --no-fail --doc docs/performance.md

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis demo-output

# Regenerate the committed gRPC modules after editing src/shipyard/protocol/proto/inference.proto.
grpc-stubs: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I src --python_out=src --pyi_out=src \
		src/shipyard/protocol/proto/inference.proto
