# vdev: PCIe device-security emulator.  Every target sets up what it needs:
# the venv (.venv) and the cached VM environment (~/.cache/vdev, or $VDEV_CACHE).
#
#   make run     device + guest, readable summary (the main job)
#   make test    lint, type check, unit/protocol/guest tests
#   make vm      boot the guest with the device attached and leave a shell
#                (logs in out/vm/; CONTROL=, TRACE=, FAULT=, FAULT_PLAN=, KSRC=)
#   make bench   benchmarks, JSON to stdout and bench/results/
#   make vm-env  build the cached trixie root (QEMU 11, Linux 7.3.4)
#   make lock    re-resolve the dependency versions into constraints.txt
#   make qemu    build the patched QEMU (IDE on the root port, qemu/README.md)
#                into the cache and print its path
#
#   make kernel KSRC=~/linux [O=dir] [KCONFIG=frag] [LLVM=1]
#                configure (guest/kernel.config) and build your kernel tree
#
# KERNEL=path/to/vmlinux-or-bzImage with KDIR=path/to/kernel/build, or
# KSRC=~/linux [O=...] (build, then run), select your own kernel;
# QEMU=path/to/qemu-system-x86_64 your own QEMU.  make run also takes
# APPEND="args", QUIET=0, INITRAMFS_ADD="files", VTSM=0
# (docs/kernel-developers.md); PROFILE=NAME|FILE: the device profile of make run /
# make vm (e.g. PROFILE=pqc: SPDM 1.4, ML-DSA-87 identity, ML-KEM-1024 sessions);
# QEMU_IDE=1: the patched QEMU (built first), whose root port has an IDE capability,
# so the kernel's own pci_ide runs the IDE stream; DOE_BATCH=1: the patched QEMU moves
# the DOE mailbox's data in bulk (x-doe-batch, qemu/README.md).  RUNDIR=dir: where
# make run / make vm keep their logs (default out/run, out/vm).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export KERNEL KDIR QEMU

.PHONY: all run vm test lint unit guest bench vm-env venv clean fuzz fuzz-atheris tools lock kernel qemu

all: test

# The venv installs exactly the versions in constraints.txt (pip -c), so two fresh
# machines test the same dependencies.  `make lock` re-resolves them deliberately.
$(STAMP): pyproject.toml constraints.txt
	@if ! $(PYTHON) -m venv --help >/dev/null 2>&1 || ! $(PYTHON) -c 'import ensurepip' 2>/dev/null; then \
	  echo "[make] $(PYTHON) has no working venv/ensurepip: installing the Debian package python3-venv"; \
	  echo "[make] system-wide with apt-get (needs root), only to create $(VENV); nothing else is installed outside it"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null; fi
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "[make] Python >= 3.11 is needed (found $$($(PYTHON) --version))"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,fast]'
	@touch $@

venv: $(STAMP)

vm-env:
	@bash guest/vm-env.sh >/dev/null

# Your kernel: KSRC= (with O=, KCONFIG=, LLVM=) is built first, like make kernel.
KERNEL_BUILD_ARGS = $(if $(O),--out "$(O)") $(if $(KCONFIG),--kconfig "$(KCONFIG)") \
	$(if $(LLVM),--llvm "$(LLVM)") $(if $(JOBS),--jobs "$(JOBS)")
RUN_ARGS = $(if $(KSRC),--ksrc "$(KSRC)" $(KERNEL_BUILD_ARGS)) \
	$(if $(APPEND),--append "$(APPEND)") $(if $(filter 0,$(QUIET)),--no-quiet) \
	$(foreach f,$(INITRAMFS_ADD),--initramfs-add "$(f)") $(if $(filter 0,$(VTSM)),--no-vtsm) \
	$(if $(PROFILE),--profile "$(PROFILE)") $(if $(filter-out 0,$(QEMU_IDE)),--qemu-ide) \
	$(if $(filter-out 0,$(DOE_BATCH)),--doe-batch) \
	$(if $(RUNDIR),--workdir "$(RUNDIR)")

# Installs the host packages the build needs with apt-get, naming each and why.
qemu: venv vm-env
	@$(PY) -m vdev.cli qemu build

# exec: make's SIGTERM then reaches vdev, which stops QEMU and the servers (a shell
# in between would die alone and leave them running).
run: venv vm-env $(if $(filter-out 0,$(QEMU_IDE) $(DOE_BATCH)),qemu)
	exec $(PY) -m vdev.cli run $(RUN_ARGS)

kernel: venv
	@test -n "$(KSRC)" || { echo "make kernel: give the kernel source tree: make kernel KSRC=~/linux [O=dir] [KCONFIG=fragment] [LLVM=1]"; exit 2; }
	@$(PY) -m vdev.cli kernel build "$(KSRC)" $(KERNEL_BUILD_ARGS)

# make vm CONTROL=path TRACE=file FAULT="spec ..." FAULT_PLAN=file: the device server's
# control socket, trace and faults, as vdev serve takes them (docs/faults.md §4).
VM_ARGS = $(if $(KSRC),--ksrc "$(KSRC)" $(KERNEL_BUILD_ARGS)) \
	$(if $(PROFILE),--profile "$(PROFILE)") $(if $(CONTROL),--control "$(CONTROL)") \
	$(if $(TRACE),--trace "$(TRACE)") $(if $(FAULT_PLAN),--fault-plan "$(FAULT_PLAN)") \
	$(foreach f,$(FAULT),--fault '$(f)') $(if $(RUNDIR),--workdir "$(RUNDIR)")

vm: venv vm-env
	exec $(PY) -m vdev.cli vm $(VM_ARGS)

lint: venv
	$(VENV)/bin/ruff check vdev spdm tdisp tsm tests guest-tests bench fuzz
	$(VENV)/bin/mypy

unit: venv
	$(VENV)/bin/pytest -q tests

guest: venv vm-env qemu
	VDEV_REQUIRE_GUEST=1 $(VENV)/bin/pytest -q guest-tests

# Host tools some tests drive: tshark (Debian's package) runs the Wireshark dissector in
# contrib/wireshark/ on a real capture.
tools:
	@command -v tshark >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" != 0 ]; then echo "[make] tshark is missing: apt-get install tshark (as root)"; exit 1; fi; \
	  echo "[make] installing tshark (Debian package) for the Wireshark dissector test"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tshark >/dev/null; }

# pytest exits 5 when it collected no tests; make treats that as the failure it is.
test: venv vm-env tools qemu lint
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

# Re-resolve every dependency to its newest allowed version in a scratch venv and
# write the result to constraints.txt (review the diff, run `make test`, commit).
lock:
	@rm -rf out/lock-venv && $(PYTHON) -m venv out/lock-venv
	out/lock-venv/bin/pip install -q --upgrade pip
	out/lock-venv/bin/pip install -q '.[dev,fast]'
	{ echo "# Generated by 'make lock' from pyproject.toml; the venv installs exactly these."; \
	  echo "# construct is pinned in pyproject.toml too: spdm/compiled.py uses its code generator."; \
	  out/lock-venv/bin/pip freeze --all --exclude vdev --exclude setuptools | LC_ALL=C sort -f; } > constraints.tmp
	mv constraints.tmp constraints.txt && rm -rf out/lock-venv build
	@echo "[make] constraints.txt updated: review 'git diff constraints.txt', then make test"

clean:
	rm -rf out $(VENV) .mypy_cache .ruff_cache .pytest_cache
