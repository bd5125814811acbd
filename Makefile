# Everything the project needs, installed into the project itself, idempotently.
#   make demo   set everything up and run the main job
#   make test   set everything up and run the tests
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup python system test demo lint bench clean

setup: python system

python: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "python: installing edgeshot and its dependencies into $(VENV) (log: $(VENV)/pip.log)"
	@$(PY) -m pip install -q --upgrade pip > $(VENV)/pip.log 2>&1 || { cat $(VENV)/pip.log; exit 1; }
	@$(PY) -m pip install -q -e '.[dev]' >> $(VENV)/pip.log 2>&1 || { cat $(VENV)/pip.log; exit 1; }
	@touch $@

# Machine-level parts (CRIU, HAProxy, ...): each scripts/setup.d/*.sh installs
# one, idempotently, and says plainly what it skips when not root.
system: $(STAMP)
	@VENV=$(abspath $(VENV)) scripts/setup-system.sh

# Integration tests run real CRIU, HAProxy and whole local networks on a 2-core
# machine. A failed test fails the run: nothing is re-run to turn red into green (a test
# that fails sometimes is a defect to find). The 25 slowest tests and the wall time are
# listed at the end, to keep CI's time in view.
test: setup
	@start=$$(date +%s); $(VENV)/bin/pytest -q --durations=25; rc=$$?; \
	  echo "== make test: pytest exit $$rc, wall time $$(( $$(date +%s) - start )) s"; exit $$rc

demo: setup
	$(VENV)/bin/edgeshot demo

lint: $(STAMP)
	$(VENV)/bin/ruff check framework tests bench

bench: setup
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
