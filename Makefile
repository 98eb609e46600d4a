# Two commands do all set-up on a fresh machine: `make run` (chat) and `make test` (the suite).
# Both create or update the virtual environment in .venv first.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
UNAME_S := $(shell uname -s)
UNAME_M := $(shell uname -m)

# llama-cpp-python builds from source (~5 min). Build it once with portable flags (AVX2, no AMX:
# a -march=native build crashed with SIGILL here because the VM does not enable AMX tiles) and
# keep the wheel outside the repository so a fresh clone or venv reuses it.
LLAMA_VERSION := 0.3.36
ifeq ($(UNAME_S)-$(UNAME_M),Linux-x86_64)
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
LLAMA_FLAVOUR := avx2
else
LLAMA_CMAKE_ARGS :=
LLAMA_FLAVOUR := default
endif
WHEEL_CACHE := $(HOME)/.cache/rlhi-local/wheels/llama-cpp-python-$(LLAMA_VERSION)-$(LLAMA_FLAVOUR)

# torch: on Linux without CUDA, the CPU build 2.13.0 (a local wheel here) before anything asks
# for torch, so no multi-GB CUDA build is pulled in.
HAS_CUDA := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo yes)

.PHONY: run test install bench clean

run: $(STAMP)
	$(BIN)/rlhi chat

test: $(STAMP)
	$(BIN)/python -m pytest

install: $(STAMP)

bench: $(STAMP)
	$(BIN)/python benchmarks/serving_overhead.py

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@if ! ls $(WHEEL_CACHE)/llama_cpp_python-$(LLAMA_VERSION)-*.whl >/dev/null 2>&1; then \
		echo "Building llama-cpp-python $(LLAMA_VERSION) once (a few minutes)..."; \
		mkdir -p $(WHEEL_CACHE).tmp && \
		TMPDIR=$(WHEEL_CACHE).tmp CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc 2>/dev/null || echo 2) \
			$(BIN)/python -m pip wheel --quiet --no-deps --no-cache-dir -w $(WHEEL_CACHE) llama-cpp-python==$(LLAMA_VERSION) && \
		rm -rf $(WHEEL_CACHE).tmp; \
	fi
	$(BIN)/python -m pip install --quiet $(WHEEL_CACHE)/llama_cpp_python-$(LLAMA_VERSION)-*.whl
ifeq ($(UNAME_S),Linux)
ifneq ($(HAS_CUDA),yes)
	$(BIN)/python -m pip install --quiet torch==2.13.0
endif
endif
	$(BIN)/python -m pip install --quiet -e '.[train,dev,mlx]'
	touch $(STAMP)

clean:
	rm -rf $(VENV)
