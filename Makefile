# toalab: build / demo / test / bench.  Every target bootstraps what it needs.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
TOALAB := $(VENV)/bin/toalab
PYTEST := $(VENV)/bin/pytest
BOOTSTRAP := $(VENV)/.toalab-installed

# Parts that live in their own directories and have their own Makefiles.
SUBDIRS := $(patsubst %/Makefile,%,$(wildcard kmod/Makefile bpf/Makefile images/Makefile))

.PHONY: all build demo test test-fast test-kernels lint bench fuzz help clean bootstrap $(SUBDIRS)

all: build ## build everything (Python package, modules, BPF programs, VM image)

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

bootstrap: ## install Debian and Python packages (idempotent)
	@sh scripts/bootstrap.sh

$(BOOTSTRAP): pyproject.toml scripts/bootstrap.sh
	@sh scripts/bootstrap.sh

build: $(BOOTSTRAP) $(SUBDIRS)

$(SUBDIRS): $(BOOTSTRAP)
	@$(MAKE) --no-print-directory -C $@ PYTHON=$(abspath $(PY))

demo: build ## the main job: the whole path in a guest, without and with toa.ko/uoa.ko
	@$(PY) -m lab.demo

lint: $(BOOTSTRAP) ## ruff over the Python code
	@$(VENV)/bin/ruff check lab tests bench scripts

test: build lint ## the suite (unit, BPF, host namespaces, VM on the default kernel), within 10 minutes
	@$(PYTEST) -q -ra -m "not extended" $(PYTEST_ARGS)

test-extended: build ## what make test leaves out: the module and BPF suites on 6.12, VM failure modes and flavours, the load/unload soak; CI runs it after make test
	@$(PYTEST) -q -ra -m extended $(PYTEST_ARGS)
	@$(PYTEST) -q -ra --kernels=other tests/test_kmod_vm.py tests/test_bpf_vm.py $(PYTEST_ARGS)

KERNEL_REPORT := build/kernels/report.jsonl
test-kernels: build ## the VM suites on every series x flavour; the table goes to kmod/README.md
	@mkdir -p $(dir $(KERNEL_REPORT)) && rm -f $(KERNEL_REPORT)
	@$(PYTEST) -q -ra --kernels=all --kernel-report=$(KERNEL_REPORT) \
		tests/test_kmod_vm.py tests/test_bpf_vm.py tests/test_scenarios.py $(PYTEST_ARGS); rc=$$?; \
	$(PY) scripts/kernel_table.py $(KERNEL_REPORT) --readme kmod/README.md || rc=1; exit $$rc

test-fast: $(BOOTSTRAP) ## unit tests only, no root features
	@$(PYTEST) -q -m "not host and not bpf and not vm" $(PYTEST_ARGS)

FUZZ_FRAMES ?= 1000000
FUZZ_SEED ?= $(shell date +%s)
FUZZ_DATAGRAMS ?= 100000
FUZZ_CONNECTIONS ?= 3000
fuzz: build ## the differential fuzzers: FUZZ_FRAMES frames each through lb.o and gwping.o; FUZZ_DATAGRAMS into uoa.ko, FUZZ_CONNECTIONS into toa.ko in a guest
	@echo "seed $(FUZZ_SEED)"; $(PY) -m lab.fuzz --frames $(FUZZ_FRAMES) --seed $(FUZZ_SEED)
	@TOALAB_FUZZ_DATAGRAMS=$(FUZZ_DATAGRAMS) TOALAB_FUZZ_CONNECTIONS=$(FUZZ_CONNECTIONS) \
		$(PYTEST) -q tests/test_kmod_vm.py -k "fuzzed or kernel_log"

bench: build ## benchmarks that print figures
	@set -e; for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b; done

clean: ## remove build products (keeps .venv)
	@for d in $(SUBDIRS); do $(MAKE) --no-print-directory -C $$d clean; done
	rm -rf build .pytest_cache .ruff_cache .hypothesis
