# `make run` and `make test` are the two commands a fresh machine needs: both build
# .venv on first use (or when the package metadata changes) and reuse it afterwards.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU build of torch that the dev and CI machines keep on local disk; the `train`
# extra itself only asks for a range, so GPU hosts keep their own CUDA build.
TORCH_PIN ?= torch==2.13.0

.PHONY: run test test-unit browser lint bench bench-api bench-trainer clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH_PIN)
	$(BIN)/python -m pip install -q -e '.[dev,postgres,train,ray,metrics,finetune]'
	touch $(STAMP)

# The API (gunicorn) and one worker, on the SQLite default; Ctrl-C stops both.
run: $(STAMP)
	$(BIN)/llm-train-api up

# The dashboard's browser tests drive Debian's chromium through chromedriver; CI runs as
# root on Debian, so a missing browser is installed here rather than skipped.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null; }; }

test: $(STAMP) browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The in-process tier (tests/unit) alone: the quick check while changing code, with a
# quarter of the property tests' examples (tests/helpers/properties.py). `make test` runs
# both tiers at full depth and stays the CI command.
test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit --hypothesis-profile=quick $(PYTEST_ARGS)

# Benchmarks (not part of `make test`): results go to docs/benchmarks.md.
bench: $(STAMP)
	$(if $(NANOGPT_DIR),,$(error bench needs NANOGPT_DIR for its trainer part: make bench NANOGPT_DIR=/path/to/nanoGPT))
	NANOGPT_DIR="$(NANOGPT_DIR)" bench/run all

bench-api: $(STAMP)
	bench/run api

# nanoGPT's train.py is run from a copy outside the repository, wherever it is on this
# machine: `make bench-trainer NANOGPT_DIR=/path/to/nanoGPT`.
bench-trainer: $(STAMP)
	$(if $(NANOGPT_DIR),,$(error bench-trainer needs NANOGPT_DIR, the folder of a nanoGPT checkout: make bench-trainer NANOGPT_DIR=/path/to/nanoGPT))
	bench/run trainer --nanogpt "$(NANOGPT_DIR)"

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info
