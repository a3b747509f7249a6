# vaultsync: the two commands a fresh machine needs are `make demo` and `make test`.
# Build caches live outside the clone (VAULTSYNC_CACHE) so repeated runs reuse them.

VAULTSYNC_CACHE ?= $(HOME)/.cache/vaultsync
export VAULTSYNC_CACHE
export CARGO_TARGET_DIR ?= $(VAULTSYNC_CACHE)/target
CARGO ?= cargo

.PHONY: all tools test chaos fuzz crds lint demo bench bench-rollout bench-csi clean-cache

all: test

## tools: build the local control plane, its node and the node's images, the CSI test tools, install the backend
## servers and the Azure SDK (cached)
tools:
	@scripts/build-controlplane.sh
	@scripts/build-node.sh
	@scripts/build-images.sh
	@scripts/build-csi-tools.sh
	@scripts/install-emulators.sh
	@scripts/install-azure-sdk.sh
	@scripts/build-toxiproxy.sh

## test: build what is needed and run every test against the real components (VAULTSYNC_SKIP_NODE_TESTS=1 skips
## the tests that run pods on the node, and building the node), TEST_JOBS test binaries at a time (most of their
## time is spent waiting on the control plane and timers); then the leak-scan report
TEST_JOBS ?= 2
test: tools
	@rm -f "$(CARGO_TARGET_DIR)/tmp/leak-scan.tsv"
	CARGO="$(CARGO)" scripts/run-tests.py --jobs $(TEST_JOBS)
	@scripts/leak-report.sh "$(CARGO_TARGET_DIR)/tmp/leak-scan.tsv"

## chaos: the fault suite with its long variants (1000 VaultSecrets, minutes-long faults), one case at a time so
## the CPU figures are the operator's own; prints the table of measured results (docs/reliability.md)
chaos: tools
	@rm -f "$(CARGO_TARGET_DIR)/chaos-report.md"
	VAULTSYNC_CHAOS_REPORT="$(CARGO_TARGET_DIR)/chaos-report.md" $(CARGO) test --locked --no-fail-fast \
		-p vaultsync-operator --test chaos --test chaos_apiserver -- --include-ignored --test-threads 1
	@cat "$(CARGO_TARGET_DIR)/chaos-report.md"

## fuzz: the property tests of every parser that takes outside input, with many more cases than CI runs
FUZZ_CASES ?= 20000
fuzz:
	PROPTEST_CASES=$(FUZZ_CASES) $(CARGO) test --locked -p vaultsync-backend -p vaultsync-operator --lib -- properties
	PROPTEST_CASES=$(FUZZ_CASES) $(CARGO) test --locked -p vaultsync-backend --test responses

## crds: regenerate crds/ from the Rust types in api/
crds:
	VAULTSYNC_UPDATE_CRDS=1 $(CARGO) test -q -p vaultsync-api --test crds

## lint: formatting, clippy with warnings denied, Go vet
lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	cd e2e/controlplane && test -z "$$(gofmt -l .)" && go vet .
	cd e2e/csi-tools/mlog && test -z "$$(gofmt -l .)" && go vet .

## demo: watch vaultsync sync a Key Vault secret into a Kubernetes Secret, locally (Ctrl-C stops); NODE=1 adds a
## node and a pod that prints the Secret it reads, before and after the rotation
demo: tools
	$(CARGO) run --locked -q -p vaultsync-tools --bin vaultsync-demo $(if $(NODE),-- --node)

## bench: measure the operator (release build) on the local control plane; BENCH_FLAGS="--count 100 --interval 20s"
BENCH_FLAGS ?=
bench: tools
	$(CARGO) build --release --locked -p vaultsync-operator
	$(CARGO) build --release --locked -p vaultsync-tools --bin vaultsync-bench
	$(CARGO_TARGET_DIR)/release/vaultsync-bench --operator-bin $(CARGO_TARGET_DIR)/release/vaultsync-operator $(BENCH_FLAGS)

## bench-rollout: rotation-to-new-ReplicaSet latency by polling and by Event Grid, reads per rotation
bench-rollout: tools
	$(CARGO) run --release --locked -q -p vaultsync-tools --bin vaultsync-rollout-bench -- $(ROLLOUT_BENCH_FLAGS)

## bench-csi: CSI node plugin figures (release build, real tmpfs mounts; run as root); CSI_BENCH_FLAGS="--volumes 300"
CSI_BENCH_FLAGS ?=
bench-csi: tools
	$(CARGO) build --release --locked -p vaultsync-csi -p vaultsync-tools --bin vaultsync-csi --bin vaultsync-csi-bench
	$(CARGO_TARGET_DIR)/release/vaultsync-csi-bench --plugin-bin $(CARGO_TARGET_DIR)/release/vaultsync-csi $(CSI_BENCH_FLAGS)

## clean-cache: remove every build cache and installed tool
clean-cache:
	rm -rf "$(VAULTSYNC_CACHE)"
