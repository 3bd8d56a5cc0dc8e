# ferrio: build, run and test. Every target that needs host packages installs them first
# (hack/install-deps.sh is idempotent), so on a fresh Debian 12 machine `make run` and `make test`
# are all the set-up there is.

SHELL := /bin/bash
# rustup installs cargo under ~/.cargo/bin, which non-login shells (CI) may not have on PATH.
export PATH := $(HOME)/.cargo/bin:/root/.cargo/bin:$(PATH)

CARGO ?= cargo
CONFIG_DIR ?= /etc/ferrio
CONFIG ?= $(CONFIG_DIR)/ferrio.toml
CNI_CONF_DIR ?= /etc/cni/net.d
TEST_REGISTRY ?= 127.0.0.1:5055
# Where cargo builds: CARGO_TARGET_DIR moves it, and `run` must start what `release` just built.
BUILD_DIR := $(or $(CARGO_TARGET_DIR),target)

.PHONY: all build release deb deps run test test-e2e test-vm lint fmt registry registry-stop clean-test bench

all: build

deps:
	hack/install-deps.sh

build:
	$(CARGO) build

release:
	$(CARGO) build --release

# The Debian package, target/debian/ferrio_<version>_<arch>.deb, from the release build
# (hack/build-deb.sh; packaging files in deploy/debian/).
deb: deps release
	hack/build-deb.sh

# Run the daemon in the foreground with the default config (installed once, never overwritten) and the
# example bridge network (installed only when no CNI config exists yet).
run: deps release
	@if [ ! -e $(CONFIG) ]; then \
		install -D -m 0644 deploy/ferrio.toml $(CONFIG) && echo "installed $(CONFIG)"; \
	fi
	@mkdir -p $(CNI_CONF_DIR)
	@if ! ls $(CNI_CONF_DIR)/*.conf $(CNI_CONF_DIR)/*.conflist $(CNI_CONF_DIR)/*.json >/dev/null 2>&1; then \
		install -m 0644 cni/10-ferrio-bridge.conflist $(CNI_CONF_DIR)/ && \
		echo "installed $(CNI_CONF_DIR)/10-ferrio-bridge.conflist"; \
	fi
	exec $(BUILD_DIR)/release/ferrio --config $(CONFIG)

# Like `run`, but pulls registry.k8s.io and docker.io images from the local test registry
# (for machines without internet): the config goes to target/, /etc is left alone.
run-local: deps release registry
	@mkdir -p $(CNI_CONF_DIR)
	@if ! ls $(CNI_CONF_DIR)/*.conf $(CNI_CONF_DIR)/*.conflist $(CNI_CONF_DIR)/*.json >/dev/null 2>&1; then \
		install -m 0644 cni/10-ferrio-bridge.conflist $(CNI_CONF_DIR)/; \
	fi
	@{ cat deploy/ferrio.toml; \
	   for p in registry.k8s.io docker.io; do \
	     printf '\n[[image.registry]]\nprefix = "%s"\nfallback = false\n[[image.registry.mirror]]\nlocation = "%s"\ninsecure = true\n' $$p $(TEST_REGISTRY); \
	   done; } > $(BUILD_DIR)/ferrio-local.toml
	exec $(BUILD_DIR)/release/ferrio --config $(BUILD_DIR)/ferrio-local.toml

registry: deps
	hack/test-registry.sh start

registry-stop:
	hack/test-registry.sh stop

fmt:
	$(CARGO) fmt

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Every test: unit tests, then the e2e suites against a real daemon, runc, CNI and the local registry,
# then the node-shape suite in a systemd + cgroup v2 VM. One test at a time: the e2e tests share the
# host's iptables and cgroups.
test: deps registry lint
	FERRIO_TEST_REGISTRY=$(TEST_REGISTRY) $(CARGO) test --workspace --all-targets -- --test-threads=1
	# The library's tests that need root (namespaces, mounts, cgroups, CNI) are ignored in a plain
	# `cargo test --lib`, which passes as any user; here, as root, they run too.
	$(CARGO) test --workspace --lib -- --ignored --test-threads=1
	$(MAKE) test-vm

# The packaged ferrio on a systemd + cgroup v2 node: a Debian 12 VM (hack/vm/), both cgroup drivers.
test-vm: deps
	hack/vm/test-vm.sh

# Only the e2e suite of this repo's harness.
test-e2e: deps registry
	FERRIO_TEST_REGISTRY=$(TEST_REGISTRY) $(CARGO) test --test e2e -- --test-threads=1

# Leftovers of interrupted e2e runs (temp dirs under /var/tmp; bridges named fe2e*).
clean-test:
	-awk '$$5 ~ "^/var/tmp/ferrio-e2e-" {print $$5}' /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l
	-for b in $$(ls /sys/class/net | grep '^fe2e'); do ip link del $$b; done
	-rm -rf /var/tmp/ferrio-e2e-*

# ferrio vs containerd, conmon and runc side by side (hack/bench/run.sh; BENCH_N iterations).
BENCH_N ?= 50
bench: deps
	hack/bench/run.sh $(BENCH_N)

# The VM test bed (hack/vm): a Debian 12 node with systemd and pure cgroup v2. `vm-image` builds (or
# reuses) its image; `vm-shell` boots it, opens a root shell and shuts it down on exit.
.PHONY: vm-image vm-shell
vm-image: deps
	hack/vm/vm.sh image

vm-shell: deps
	hack/vm/vm.sh shell
