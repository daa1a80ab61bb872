# Every target sets up what it needs; a fresh machine needs only `make demo` or `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export AUDIT_SHIPPER_CACHE ?= $(HOME)/.cache/audit-shipper

.PHONY: setup demo test test-unit soak bench tools clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt scripts/bootstrap
	scripts/bootstrap $(VENV)
	touch $@

tools: setup
	scripts/fetch-kafka
	scripts/build-kube-tools

demo: setup
	$(VENV)/bin/shipper demo

test: setup tools
	$(PY) -m pytest -p no:cacheprovider

test-unit: setup
	$(PY) -m pytest -p no:cacheprovider tests/unit

soak: setup tools
	$(PY) -m pytest -p no:cacheprovider -m soak

bench: setup tools
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info
