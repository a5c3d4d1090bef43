# vdev: PCIe device-security emulator.  Every target sets up what it needs:
# the venv (.venv) and the cached VM environment (~/.cache/vdev, or $VDEV_CACHE).
#
#   make run     device + guest, readable summary (the main job)
#   make test    lint, type check, unit/protocol/guest tests
#   make vm      boot the guest with the device attached and leave a shell
#   make bench   benchmarks, JSON to stdout and bench/results/
#   make vm-env  build the cached trixie root (QEMU 11, Linux 7.3.4)
#
# KERNEL=path/to/vmlinux-or-bzImage, KDIR=path/to/kernel/build and
# QEMU=path/to/qemu-system-x86_64 select your own kernel and QEMU.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export KERNEL KDIR QEMU

.PHONY: all run vm test lint unit guest bench vm-env venv clean fuzz fuzz-atheris tools

all: test

$(STAMP): pyproject.toml
	@if ! $(PYTHON) -m venv --help >/dev/null 2>&1 || ! $(PYTHON) -c 'import ensurepip' 2>/dev/null; then \
	  echo "[make] installing python3-venv"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null; fi
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "[make] Python >= 3.11 is needed (found $$($(PYTHON) --version))"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

venv: $(STAMP)

vm-env:
	@bash guest/vm-env.sh >/dev/null

run: venv vm-env
	$(PY) -m vdev.cli run

vm: venv vm-env
	$(PY) -m vdev.cli vm

lint: venv
	$(VENV)/bin/ruff check vdev spdm tdisp tsm tests guest-tests bench fuzz
	$(VENV)/bin/mypy

unit: venv
	$(VENV)/bin/pytest -q tests

guest: venv vm-env
	VDEV_REQUIRE_GUEST=1 $(VENV)/bin/pytest -q guest-tests

# Host tools some tests drive: tshark (Debian's package) runs the Wireshark dissector in
# contrib/wireshark/ on a real capture.
tools:
	@command -v tshark >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" != 0 ]; then echo "[make] tshark is missing: apt-get install tshark (as root)"; exit 1; fi; \
	  echo "[make] installing tshark (Debian package) for the Wireshark dissector test"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tshark >/dev/null; }

# pytest exits 5 when it collected no tests; make treats that as the failure it is.
test: venv vm-env tools lint
	VDEV_REQUIRE_GUEST=1 VDEV_REQUIRE_TOOLS=1 $(VENV)/bin/pytest -q --timeout=600 tests guest-tests

# Hypothesis fuzz tests with the long budget (make test runs them with the short "ci" one).
fuzz: venv
	HYPOTHESIS_PROFILE=long $(VENV)/bin/pytest -q tests/fuzz

# Coverage-guided fuzzing; needs `$(VENV)/bin/pip install atheris` (fuzz/README.md).
FUZZ_SECONDS ?= 60
fuzz-atheris: venv
	@$(PY) -c 'import atheris' 2>/dev/null || { echo "[make] $(VENV)/bin/pip install atheris first"; exit 1; }
	@mkdir -p out/atheris
	for t in fuzz/atheris_*.py; do cd out/atheris && ../../$(PY) ../../$$t -max_total_time=$(FUZZ_SECONDS) || exit 1; cd ../..; done

bench: venv
	$(PY) -m bench

clean:
	rm -rf out $(VENV) .mypy_cache .ruff_cache .pytest_cache
