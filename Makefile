# apb: build, install and test.
#
#   make test           fresh .venv, real (non-editable) install with test extras,
#                       ruff, pytest on 2 workers: what CI runs (.ci/run)
#   make demo           install, then `apb demo`
#   make results        install, then `apb compare` of every method on LeNet-5 / mnist5k,
#                       3 seeds: writes docs/results.md (+ JSON and plot in docs/results/)
#   make build-inplace  development: build apb._C into build/inplace and copy it into
#                       src/apb/, so `PYTHONPATH=src .venv/bin/python` sees it
#   make clean
#
# Every pip call passes -c constraints.txt, which pins torch to the CPU wheel on disk.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
PIP_INSTALL := $(PIP) install -c constraints.txt

# Reinstall only when something that goes into the package has changed (folders are
# listed too, so that a deleted file also counts as a change).
PACKAGE_INPUTS := pyproject.toml CMakeLists.txt constraints.txt \
	$(shell find src csrc -type f \( -name '*.py' -o -name '*.cpp' -o -name '*.h' \) 2>/dev/null) \
	$(shell find src csrc -type d -not -name __pycache__ 2>/dev/null)
TORCH_STAMP   := $(VENV)/.stamp-torch
INSTALL_STAMP := $(VENV)/.stamp-install

INPLACE_DIR := build/inplace
CMAKE_GENERATOR_FLAG := $(if $(shell command -v ninja 2>/dev/null),-G Ninja,)

.PHONY: venv install test demo results build-inplace clean

venv: $(PY)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

# torch first and on its own, so that nothing else can pick its build.
$(TORCH_STAMP): constraints.txt | $(PY)
	$(PIP_INSTALL) torch==2.13.0
	touch $@

$(INSTALL_STAMP): $(TORCH_STAMP) $(PACKAGE_INPUTS)
	$(PIP_INSTALL) '.[test]'
	touch $@

install: $(INSTALL_STAMP)

test: install
	$(VENV)/bin/ruff check src tests
	$(PY) -m pytest -q -n 2 --dist loadgroup tests

demo: install
	$(VENV)/bin/apb demo

results: install
	$(VENV)/bin/apb compare --out runs/results --seeds 3 \
		--json docs/results/lenet5-mnist5k.json --plot docs/results/lenet5-mnist5k.png \
		--markdown docs/results.md

build-inplace: | $(PY)
	$(PY) -c "import nanobind" 2>/dev/null || $(PIP_INSTALL) nanobind
	cmake -S . -B $(INPLACE_DIR) $(CMAKE_GENERATOR_FLAG) -DCMAKE_BUILD_TYPE=Release \
		-DPython_EXECUTABLE=$(abspath $(PY))
	cmake --build $(INPLACE_DIR) --parallel
	cp $(INPLACE_DIR)/_C*.so src/apb/

clean:
	rm -rf build dist src/apb/_C*.so .pytest_cache .ruff_cache .hypothesis
	find src tests -name __pycache__ -type d -prune -exec rm -rf {} +
