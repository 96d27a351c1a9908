# The two commands of the README, plus their parts. Everything runs inside .venv (created if
# missing) and installs through constraints.txt, so a fresh clone gets the same versions as CI.
#   make test   set up, build the extension, run the test suite
#   make demo   set up, build, run the main job (MedTrim vs InfoNCE on the built-in phantoms)

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONSTRAINTS := constraints.txt
# what the build and the tests need, on top of the package's own dependencies
DEV_PACKAGES := torch numpy tqdm matplotlib scikit-build-core cmake ninja pytest hypothesis \
	spacy medspacy pyyaml pandas pyarrow torchxrayvision timm transformers tokenizers tensorboard pillow scikit-learn
STAMP := $(VENV)/.medtrim-deps

.PHONY: all setup build test demo bench clean

all: test

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(CONSTRAINTS) Makefile | $(PY)
	$(PIP) install --quiet -c $(CONSTRAINTS) --upgrade pip
	$(PIP) install --quiet -c $(CONSTRAINTS) $(DEV_PACKAGES)
	touch $@

setup: $(STAMP)

# --no-build-isolation: compile against the venv's torch (pinned), incrementally in build/.
build: $(STAMP)
	$(PIP) install --quiet --no-build-isolation --no-deps -c $(CONSTRAINTS) .
	cd /tmp && $(CURDIR)/$(PY) -c "import medtrim_ext, json; print('medtrim_ext built:', json.dumps(medtrim_ext.build_info()))"

# run pytest from the venv's bin so the installed package (with its compiled _C) is imported
test: build
	$(VENV)/bin/pytest

demo: build
	$(VENV)/bin/medtrim demo --out benchmarks/out/demo

bench: build
	$(PY) benchmarks/bench_kernels.py --out benchmarks/out/full

clean:
	rm -rf build benchmarks/out .pytest_cache .hypothesis
