# netns-holder: pod network namespaces for a Kubernetes-style node. See README.md.
#
#   make demo    build what is needed and run the demo in a throwaway node namespace (root)
#   make test    install missing Debian packages, then lint and run every test (root)
#   make bench   footprint and latency benchmarks, side by side with the reference tools
#   make install PREFIX=/usr/local DESTDIR=   install binaries, pause and the systemd unit

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := build

CARGO ?= cargo
PREFIX ?= /usr/local
DESTDIR ?=
BINDIR ?= $(PREFIX)/bin
LIBEXECDIR ?= $(PREFIX)/libexec/netns-holder
SYSTEMDDIR ?= $(PREFIX)/lib/systemd/system
SYSCONFDIR ?= /etc
# podman reads hooks from /usr/share/containers/oci/hooks.d and /etc/containers/oci/hooks.d
# (PREFIX=/usr installs there; otherwise pass --hooks-dir or set hooks_dir in containers.conf).
HOOKSDIR ?= $(PREFIX)/share/containers/oci/hooks.d
# Where runtimes look for CNI plugins; the plugin is a symlink named after its `type`.
CNIBINDIR ?= /opt/cni/bin
# Where containerd (plugin_path) and CRI-O (nri_plugin_dir) start pre-installed NRI plugins;
# the file name's NN- prefix is the plugin index.
NRIPLUGINDIR ?= /opt/nri/plugins

# One target directory for every build, test and benchmark.
export CARGO_TARGET_DIR ?= $(CURDIR)/target
TARGET := $(CARGO_TARGET_DIR)

PAUSE_BIN := $(TARGET)/pause/pause
export PAUSE_BIN
IMAGE_DIR := $(TARGET)/image
IMAGE_LAYOUT := $(IMAGE_DIR)/pause-oci
IMAGE_ARCHIVE := $(IMAGE_DIR)/pause.oci.tar

# Debian packages the demo needs (installed by `make demo` when missing) and those the
# tests and benchmarks use on top (installed by `make deps`, hence `make test`).
# The daemon itself runs nft and conntrack.
# prometheus: promtool and the Prometheus server of tests/tests/metrics.rs.
# etcd-server: the etcd members of tests/tests/cluster.rs and bench_cluster.
# protobuf-compiler, libprotobuf-dev: protoc for etcd-client's build (the daemon's etcd backend).
DEMO_DEB_PACKAGES := iproute2 util-linux iputils-ping busybox-static runc crun nftables conntrack \
	protobuf-compiler libprotobuf-dev
DEB_PACKAGES := $(DEMO_DEB_PACKAGES) procps strace podman skopeo catatonit \
	containernetworking-plugins docker-registry prometheus etcd-server

.PHONY: build pause image demo demo-deps test deps lint fmt bench install clean dist

# The shipped `netns-holder` and `cri-hook` ($(DIST)) are built with the `dist` profile
# (release with whole-program optimisation) and linked statically and position-dependent,
# as the upstream release binaries of containerd, runc and kubelet are: no dynamic loader,
# no relocations at start, so every CLI call, CNI call and OCI hook starts about 0.6 ms
# sooner on our test guest (docs/datapath.md, stop 22). glibc 2.36 carries its `files` and
# `dns` host lookups in the static library, which is all the daemon's etcd endpoints use.
STATIC_LINK := -C target-feature=+crt-static -C relocation-model=static
DIST := $(TARGET)/dist

## build: the static pause, release builds of every binary, and the shipped ones ($(DIST))
build: pause
	$(CARGO) build --workspace --release --locked
	$(MAKE) --no-print-directory dist

## dist: the shipped `netns-holder` and `cri-hook`: whole-program optimised, linked statically
dist:
	$(CARGO) rustc -p netns-holder --bin netns-holder --profile dist --locked -- $(STATIC_LINK)
	$(CARGO) rustc -p cri-hook --bin cri-hook --profile dist --locked -- $(STATIC_LINK)

## pause: the static, libc-free pause binary ($(PAUSE_BIN))
pause:
	$(CARGO) build -p pause --profile pause --locked
	@ls -l $(PAUSE_BIN)

## image: the pause OCI image layout and oci-archive, built by our own code
image: pause
	$(CARGO) build -p pause-image --release --locked
	$(TARGET)/release/pause-image --pause $(PAUSE_BIN) \
		--layout $(IMAGE_LAYOUT) --archive $(IMAGE_ARCHIVE)

## demo: the main job for real, inside its own throwaway node network namespace
demo: demo-deps pause
	$(CARGO) build -p netns-holder --locked
	NETNS_HOLDER_BIN=$(TARGET)/debug/netns-holder PAUSE_BIN=$(PAUSE_BIN) demo/demo.sh

## demo-deps: the Debian packages the demo needs (apt-get, only those missing)
demo-deps:
	scripts/ensure-debs.sh $(DEMO_DEB_PACKAGES)

## deps: Debian packages (apt-get, only those missing) and crates (cargo fetch)
deps:
	scripts/ensure-debs.sh $(DEB_PACKAGES)
	$(CARGO) fetch --locked

## lint: formatting and clippy with warnings as errors
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

fmt:
	$(CARGO) fmt --all

## test: everything, privileged tests included (they skip loudly when not root), with /run
##       starting empty (scripts/run-tests.sh) and a passed/failed summary at the end
# No incremental build caches in a one-off test build: they only add disk.
test: export CARGO_INCREMENTAL := 0
test: deps pause lint
	$(CARGO) build --workspace --locked
	CARGO=$(CARGO) scripts/run-tests.sh

## bench: pause footprint vs catatonit -P; pod create/remove on both datapaths (API) and routed (CLI) vs the CNI reference chain (with and without portmap) and the routed 4000-pod scale run with first-packet latency at 1-2 vs 4000 pods; first-packet RTT with proxy ARP vs permanent neighbours; load (1000 pods, 32 clients); create/remove with a /metrics scraper every 100 ms vs without; cluster: lease -> route, 1000 peers vs ip -batch
bench: pause
	$(CARGO) build -p nh-tests --release --locked
	$(MAKE) --no-print-directory dist
	$(TARGET)/release/bench_pause
	NETNS_HOLDER_BIN=$(DIST)/netns-holder $(TARGET)/release/bench_pods
	ROUTES=1 LO=1 PAUSE=$(PAUSE_BIN) scripts/kernel-growth-reference.sh 4000
	scripts/first-packet-neighbours.sh
	NETNS_HOLDER_BIN=$(DIST)/netns-holder CRI_HOOK_BIN=$(DIST)/cri-hook \
		$(TARGET)/release/bench_nri
	NETNS_HOLDER_BIN=$(DIST)/netns-holder $(TARGET)/release/bench_hostports
	NETNS_HOLDER_BIN=$(DIST)/netns-holder $(TARGET)/release/bench_load
	NETNS_HOLDER_BIN=$(DIST)/netns-holder $(TARGET)/release/bench_metrics
	NETNS_HOLDER_BIN=$(DIST)/netns-holder $(TARGET)/release/bench_cluster

# `make fuzz`: the proptest fuzz targets with many cases. The parser targets of cri-hook
# (fuzz_parsers) run FUZZ_CASES cases each and stop after FUZZ_SECONDS; the ttRPC/mux targets
# of nri (fuzz) have no time bound of their own and run FUZZ_TTRPC_CASES (PROPTEST_CASES) cases.
# Each test binary is killed (and make fails) after FUZZ_TIMEOUT seconds. Corpus:
# tests/fuzz-corpus/ (parsers), nri/tests/corpus/ (ttRPC/mux).
FUZZ_CASES ?= 1000000
FUZZ_SECONDS ?= 30
FUZZ_TTRPC_CASES ?= 10000
FUZZ_TIMEOUT ?= 900
.PHONY: fuzz

## fuzz: every fuzz target with many cases, each bounded in time (FUZZ_CASES, FUZZ_SECONDS)
fuzz:
	$(CARGO) test -p cri-hook --locked --no-run --test fuzz_corpus --test fuzz_parsers
	$(CARGO) test -p nri --locked --no-run --test fuzz
	for t in fuzz_corpus fuzz_parsers; do \
		FUZZ_CASES=$(FUZZ_CASES) FUZZ_SECONDS=$(FUZZ_SECONDS) \
			timeout $(FUZZ_TIMEOUT) $(CARGO) test -p cri-hook --locked --test $$t -- --nocapture; \
	done
	PROPTEST_CASES=$(FUZZ_TTRPC_CASES) \
		timeout $(FUZZ_TIMEOUT) $(CARGO) test -p nri --locked --test fuzz -- --nocapture

## install: binaries, the pause, the systemd unit and a config (honours PREFIX, DESTDIR)
install: build
	install -D -m 0755 $(DIST)/netns-holder $(DESTDIR)$(BINDIR)/netns-holder
	install -D -m 0755 $(DIST)/cri-hook $(DESTDIR)$(BINDIR)/cri-hook
	install -d -m 0755 $(DESTDIR)$(HOOKSDIR)
	sed -e 's|/usr/local/bin/cri-hook|$(BINDIR)/cri-hook|' \
		cri-hook/hooks.d/netns-holder.json > $(DESTDIR)$(HOOKSDIR)/netns-holder.json
	chmod 0644 $(DESTDIR)$(HOOKSDIR)/netns-holder.json
	install -d -m 0755 $(DESTDIR)$(CNIBINDIR)
	ln -sfn $(BINDIR)/cri-hook $(DESTDIR)$(CNIBINDIR)/netns-holder
	@# Started by the runtime with NRI_PLUGIN_SOCKET=3, cri-hook runs as the NRI plugin.
	install -d -m 0755 $(DESTDIR)$(NRIPLUGINDIR)
	ln -sfn $(BINDIR)/cri-hook $(DESTDIR)$(NRIPLUGINDIR)/10-netns-holder
	install -D -m 0755 $(TARGET)/release/pause-image $(DESTDIR)$(BINDIR)/pause-image
	install -D -m 0755 $(PAUSE_BIN) $(DESTDIR)$(LIBEXECDIR)/pause
	install -d -m 0755 $(DESTDIR)$(SYSTEMDDIR)
	sed -e 's|/usr/local/bin/netns-holder|$(BINDIR)/netns-holder|' \
		-e 's|/etc/netns-holder/config.toml|$(SYSCONFDIR)/netns-holder/config.toml|' \
		netns-holder/netns-holder.service > $(DESTDIR)$(SYSTEMDDIR)/netns-holder.service
	chmod 0644 $(DESTDIR)$(SYSTEMDDIR)/netns-holder.service
	@# An operator's config is never overwritten; a new one points at the installed pause.
	if [ ! -e $(DESTDIR)$(SYSCONFDIR)/netns-holder/config.toml ]; then \
		install -d -m 0755 $(DESTDIR)$(SYSCONFDIR)/netns-holder; \
		sed -e 's|^pause_binary = .*|pause_binary = "$(LIBEXECDIR)/pause"|' \
			netns-holder/netns-holder.example.toml > $(DESTDIR)$(SYSCONFDIR)/netns-holder/config.toml; \
		chmod 0644 $(DESTDIR)$(SYSCONFDIR)/netns-holder/config.toml; \
	fi

clean:
	$(CARGO) clean
