# Every target sets up what it needs; a fresh machine needs only `make demo` or `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export AUDIT_SHIPPER_CACHE ?= $(HOME)/.cache/audit-shipper

.PHONY: setup demo test test-unit soak bench bench-verify tools clean

setup: $(VENV)/.installed $(VENV)/.native

$(VENV)/.installed: pyproject.toml constraints.txt scripts/bootstrap
	scripts/bootstrap $(VENV)
	touch $@

# The native hot path is rebuilt in place when its C sources change (the install built it once).
$(VENV)/.native: $(VENV)/.installed setup.py $(wildcard native/*.c native/*.h)
	$(PY) setup.py -q build_ext --inplace
	$(PY) -c 'import shipper.native as n, sys; sys.exit(0 if n.ENABLED else "shipper._native did not build")'
	touch $@

tools: setup
	scripts/fetch-kafka
	scripts/build-kube-tools
	scripts/build-c2sp-tools

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

bench-verify: setup tools
	$(PY) bench/verify_topic_bench.py --broker kafka

clean:
	rm -rf $(VENV) build *.egg-info
