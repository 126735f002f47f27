# directlb — build, test and run the local test bed.
#
#   make demo   bring up the test bed and show a direct-access Service
#   make test   every test: unit, privileged (BPF, netns) and end-to-end
#
SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
GO ?= go
BIN := $(CURDIR)/bin
export PATH := $(BIN):$(PATH)

# Pinned versions. Changing a pin rebuilds what depends on it.
K8S_VERSION  := v1.36.3
HELM_VERSION := v3.22.0
STATICCHECK_VERSION := v0.8.2
GOLANGCI_LINT_VERSION := v2.15.0

DEB_PACKAGES := etcd-server clang llvm libbpf-dev bpftool iproute2 iptables nftables curl awscli util-linux \
	runc containernetworking-plugins busybox-static netcat-openbsd bind9-dnsutils wget \
	openjdk-17-jdk-headless

CONTAINERD_VERSION := v2.3.7

K8S_BINS := kube-apiserver kube-controller-manager kube-scheduler kubectl kube-proxy kubelet
K8S_STAMP := $(BIN)/.k8s-$(K8S_VERSION)
HELM_STAMP := $(BIN)/.helm-$(HELM_VERSION)
CONTAINERD_STAMP := $(BIN)/.containerd-$(CONTAINERD_VERSION)
# agnhost, the e2e framework's test server, for the agnhost image.
AGNHOST_STAMP := $(BIN)/.agnhost-$(K8S_VERSION)
# The upstream e2e suite (e2e.test) and its ginkgo runner, for make conformance.
E2E_TEST_STAMP := $(BIN)/.e2e-test-$(K8S_VERSION)
# CoreDNS with the test bed's plugins (hack/coredns), the cluster DNS.
COREDNS_STAMP := $(BIN)/.coredns
K8S_LDFLAGS := -s -w \
	-X k8s.io/component-base/version.gitVersion=$(K8S_VERSION) \
	-X k8s.io/component-base/version.gitMajor=1 \
	-X k8s.io/component-base/version.gitMinor=36 \
	-X k8s.io/client-go/pkg/version.gitVersion=$(K8S_VERSION) \
	-X k8s.io/client-go/pkg/version.gitMajor=1 \
	-X k8s.io/client-go/pkg/version.gitMinor=36

# Our own binaries, static (CGO_ENABLED=0) so that they run in images
# without a libc; the pause and echo programs of the test bed's images.
CMDS := lb-controller node-agent localcloud directlb-cni
TESTBED := $(BIN)/dlb-testbed
E2E_CMDS := dlb-testbed dlb-echo pause dlb-conformance

.PHONY: all
all: build

## deps: install the Debian packages the build and the tests need.
.PHONY: deps
deps:
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	else echo "deps: all Debian packages present"; fi

## tools: build the pinned Kubernetes binaries, e2e.test, containerd, agnhost, CoreDNS and helm into bin/ (cached).
.PHONY: tools
tools: $(K8S_STAMP) $(HELM_STAMP) $(CONTAINERD_STAMP) $(AGNHOST_STAMP) $(E2E_TEST_STAMP) $(COREDNS_STAMP)

$(K8S_STAMP): hack/tools/go.mod hack/tools/go.sum
	@mkdir -p $(BIN)
	@echo "building Kubernetes $(K8S_VERSION) binaries (about 10 minutes cold on 2 cores)"
	cd hack/tools && $(GO) build -trimpath -ldflags "$(K8S_LDFLAGS)" -o $(BIN)/ \
		$(addprefix k8s.io/kubernetes/cmd/,$(K8S_BINS))
	@rm -f $(BIN)/.k8s-*; touch $@

# containerd, its runc shim and ctr for the test bed's nodes, static.
$(CONTAINERD_STAMP):
	@mkdir -p $(BIN)
	CGO_ENABLED=0 GOBIN=$(BIN) $(GO) install -trimpath -ldflags "-s -w" -tags "no_btrfs no_devmapper no_zfs" \
		$(addprefix github.com/containerd/containerd/v2/cmd/,$(addsuffix @$(CONTAINERD_VERSION),containerd containerd-shim-runc-v2 ctr))
	@rm -f $(BIN)/.containerd-*; touch $@

$(AGNHOST_STAMP): hack/tools/go.mod hack/tools/go.sum
	@mkdir -p $(BIN)
	cd hack/tools && CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w" -o $(BIN)/agnhost \
		k8s.io/kubernetes/test/images/agnhost
	@rm -f $(BIN)/.agnhost-*; touch $@

$(E2E_TEST_STAMP): hack/tools/go.mod hack/tools/go.sum
	@mkdir -p $(BIN)
	cd hack/tools && $(GO) test -c -trimpath -ldflags "$(K8S_LDFLAGS)" -o $(BIN)/e2e.test k8s.io/kubernetes/test/e2e
	cd hack/tools && $(GO) build -trimpath -o $(BIN)/ginkgo github.com/onsi/ginkgo/v2/ginkgo
	@rm -f $(BIN)/.e2e-test-*; touch $@

$(COREDNS_STAMP): hack/coredns/go.mod hack/coredns/go.sum hack/coredns/main.go
	@mkdir -p $(BIN)
	cd hack/coredns && CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w" -o $(BIN)/coredns .
	touch $@

$(HELM_STAMP):
	@mkdir -p $(BIN)
	GOBIN=$(BIN) $(GO) install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)
	@rm -f $(BIN)/.helm-*; touch $@

## build: build directlb's binaries and the test bed into bin/.
.PHONY: build
build:
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -o $(BIN)/ $(addprefix ./cmd/,$(CMDS)) $(addprefix ./e2e/cmd/,$(E2E_CMDS))

## images: the test bed's container images as OCI archives in bin/images/
## (no registry: 'ctr images import' loads them; docs/testbed.md).
.PHONY: images
images: build tools
	$(TESTBED) images --bin-dir $(BIN) --out $(BIN)/images

## test: every test — unit, privileged, end-to-end and the upstream conformance gate.
.PHONY: test
test: test-unit test-e2e test-conformance

## test-unit: unit tests and privileged tests (BPF, netns; they need root).
.PHONY: test-unit
test-unit:
	$(GO) test -count=1 -timeout 15m $$($(GO) list ./... | grep -v /e2e/tests)

## test-e2e: end-to-end tests on the local test bed (root).
.PHONY: test-e2e
test-e2e: tools build images
	DLB_BIN_DIR=$(BIN) $(GO) test -count=1 -timeout 40m -v ./e2e/tests/... 2>&1 | tee $(BIN)/e2e.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok|panic)|_test.go' ; \
	exit $${PIPESTATUS[0]}

## conformance: the upstream e2e suites (Services conformance, the sig-node
## subset, sig-network) under kube-proxy and under directlb, each on a fresh
## test bed; rewrites the results in docs/conformance.md.
.PHONY: conformance
conformance: tools build images
	$(BIN)/dlb-conformance --bin-dir $(BIN) $(CONFORMANCE_ARGS)

## test-conformance: the upstream Services conformance tests and the sig-node
## subset against directlb on a bed of their own, held to the recorded results
## (e2e/conformance/testdata; docs/conformance.md).
.PHONY: test-conformance
test-conformance: tools build images
	DLB_CONFORMANCE=1 DLB_BIN_DIR=$(BIN) DLB_CONFORMANCE_OUT=$(BIN)/conformance-gate \
		$(GO) test -count=1 -timeout 45m -v -run TestConformanceGate ./e2e/conformance/ 2>&1 | tee $(BIN)/conformance.log | \
		grep -E '^(=== RUN|--- |PASS|FAIL|ok|panic)|_test.go' ; \
	exit $${PIPESTATUS[0]}

## up / down: bring the local test bed up or tear it down (idempotent).
.PHONY: up down
up: tools build images
	$(TESTBED) up --localcloud --bin-dir $(BIN)
down:
	@if [ -x $(TESTBED) ]; then $(TESTBED) down; else $(GO) run ./e2e/cmd/dlb-testbed down; fi

## demo: the test bed, an echo Deployment, a direct-access Service.
.PHONY: demo
demo: deps tools build images
	hack/demo.sh

## bench: benchmarks, side by side with the peers; see docs/benchmarks.md.
.PHONY: bench
bench: tools build images
	DLB_BIN_DIR=$(BIN) $(GO) test -run '^$$' -bench . -benchtime 1x -timeout 40m ./bench/...
	@# Rollout under load on the test bed (root): requests lost, containers-ready → gate True and drain p50/p99.
	DLB_BIN_DIR=$(BIN) $(GO) test -count=1 -timeout 20m -v -run '^TestRollout' ./e2e/tests/ 2>&1 | grep -E '^(e2e rollout:|--- |ok|FAIL|panic)' ; \
	exit $${PIPESTATUS[0]}

## bench-lbc-gates: lb-controller's cold convergence with readiness gates only,
## SERVICES Services × 10 gated pods (default 200; SERVICES=1000 is issue 13's
## size, about 30 minutes); LBC_FLAGS adds lb-controller flags. docs/benchmarks.md.
SERVICES ?= 200
LBC_FLAGS ?=
.PHONY: bench-lbc-gates
bench-lbc-gates: tools
	DLB_BIN_DIR=$(BIN) DLB_BENCH_LBC_SERVICES=$(SERVICES) DLB_BENCH_LBC_FLAGS="$(LBC_FLAGS)" nice -n 10 \
	  $(GO) test -run '^$$' -bench BenchmarkConvergenceGates -benchtime 1x -timeout 60m ./bench/controller

## generate / verify-generate: regenerate the BPF objects and Go bindings.
.PHONY: generate verify-generate
generate:
	$(GO) generate ./pkg/datapath/...
verify-generate: generate
	git diff --exit-code -- pkg/datapath

## verify-tidy: fail if 'go mod tidy' would change go.mod or go.sum (all three modules).
.PHONY: verify-tidy
verify-tidy:
	$(GO) mod tidy -diff
	cd hack/tools && $(GO) mod tidy -diff
	cd hack/coredns && $(GO) mod tidy -diff

## lint: go vet, staticcheck and golangci-lint at pinned versions.
.PHONY: lint
lint:
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...
	$(GO) run github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION) run ./...

.PHONY: clean
clean:
	rm -rf $(BIN)
