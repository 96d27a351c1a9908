# The two commands of the README, plus their parts. Everything runs inside .venv (created if
# missing) and installs through constraints.txt, so a fresh clone gets the same versions as CI.
#   make test   set up, build the extension, run the test suite
#   make demo   set up, build, run the main job (MedTrim vs InfoNCE on the built-in phantoms)
#   make demo-iu  the same on the real IU reports with phantom images of their findings

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONSTRAINTS := constraints.txt
# what the build needs before pip can build the package (--no-build-isolation), plus the package
# that ships the IU reports for the extraction benchmark, the iu_phantoms data and the tests; everything else comes from the
# package's own extras ([all,test] in pyproject.toml), so `make test` checks that they suffice
BUILD_PACKAGES := pip torch numpy scikit-build-core cmake ninja torchxrayvision
EXTRAS := all,test
STAMP := $(VENV)/.medtrim-deps
# pip's own progress: its Collecting / Building / Installing lines and download bars
PIP_FLAGS := --progress-bar on

.PHONY: all setup build test demo demo-iu bench clean

all: test

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(CONSTRAINTS) Makefile pyproject.toml | $(PY)
	@echo "== set-up: build tools and torch into $(VENV) (pinned by $(CONSTRAINTS); first time ~3 min)"
	$(PIP) install $(PIP_FLAGS) -c $(CONSTRAINTS) --upgrade $(BUILD_PACKAGES)
	touch $@

setup: $(STAMP)

# --no-build-isolation: compile against the venv's torch (pinned), incrementally in build/; the
# extras' dependencies are installed through the same pins.
build: $(STAMP)
	@echo "== build: the extension (C++ always, CUDA where a CUDA torch and nvcc exist) and the [$(EXTRAS)] extras"
	$(PIP) install $(PIP_FLAGS) --no-build-isolation -c $(CONSTRAINTS) ".[$(EXTRAS)]"
	cd /tmp && $(CURDIR)/$(PY) -c "import medtrim_ext, json; print('medtrim_ext built:', json.dumps(medtrim_ext.build_info()))"

# run pytest from the venv's bin so the installed package (with its compiled _C) is imported
test: build
	$(VENV)/bin/pytest

demo: build
	$(VENV)/bin/medtrim demo --out benchmarks/out/demo

demo-iu: build
	$(VENV)/bin/medtrim demo --dataset iu-phantoms --out benchmarks/out/demo-iu

bench: build
	$(PY) benchmarks/bench_kernels.py --out benchmarks/out/full

clean:
	rm -rf build benchmarks/out .pytest_cache .hypothesis
