# Two commands a fresh machine needs: `make run` and `make test`. Both build what they use.
#
# Two virtualenvs, so that a stale compiled module can never stand in for an edited source file:
#   .venv           an editable install of the pure-Python build (BASCULE_NO_EXTENSIONS=1):
#                   edits show at once; `make test-pure` and `make lint` use it.
#   .venv-compiled  a regular (copied, not editable) install of the mypyc build, reinstalled
#                   from a clean build/ whenever a source file changes; `make test-compiled`
#                   and `make run` use it. Its tests run with PYTHONSAFEPATH=1 from a tree
#                   whose src/ is never on sys.path, so they import the installed package, and
#                   tests/unit/test_build.py checks that what they imported is compiled.
PYTHON        ?= python3
VENV          ?= .venv
COMPILED_VENV ?= .venv-compiled
PY            := $(VENV)/bin/python
CPY           := $(COMPILED_VENV)/bin/python
STAMP         := $(VENV)/.installed-stamp
COMPILED_STAMP := $(COMPILED_VENV)/.installed-stamp
SOURCES       := $(shell find src/bascule -name '*.py' -o -name '*.pyx' -o -name '*.pxd')

.PHONY: run test test-pure test-compiled compiled lint check bench clean

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	BASCULE_NO_EXTENSIONS=1 $(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# build/ goes first: setuptools would otherwise ship files left there by an earlier build
# (a module since deleted from src/, an extension it thinks is up to date).
$(COMPILED_STAMP): pyproject.toml setup.py $(SOURCES)
	test -x $(CPY) || { $(PYTHON) -m venv $(COMPILED_VENV) && $(CPY) -m pip install -q --upgrade pip; }
	rm -rf build
	$(CPY) -m pip install -q '.[dev]'
	rm -rf build
	PYTHONSAFEPATH=1 $(CPY) -m bascule version  # says "(pure Python)" if compiling failed
	touch $(COMPILED_STAMP)

compiled: $(COMPILED_STAMP)

run: $(COMPILED_STAMP)
	$(COMPILED_VENV)/bin/bascule run $(if $(CONFIG),-c $(CONFIG))

test: test-pure test-compiled

test-pure: $(STAMP)
	BASCULE_EXPECT_BUILD=pure $(PY) -m pytest $(PYTEST_ARGS)

test-compiled: $(COMPILED_STAMP)
	BASCULE_EXPECT_BUILD=compiled PYTHONSAFEPATH=1 $(CPY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check setup.py src tests bench
	$(VENV)/bin/ruff format --check setup.py src
	$(VENV)/bin/mypy
	$(PY) -m pytest -q -p no:cacheprovider tests/unit/test_layers.py

bench: $(STAMP)
	bash bench/http.sh

clean:
	rm -rf $(VENV) $(COMPILED_VENV) build .pytest_cache .mypy_cache .ruff_cache
