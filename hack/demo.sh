#!/usr/bin/env bash
# make demo: bring up the local test bed with localcloud, helm install
# directlb, apply examples/ (an echo Deployment and a direct-access Service),
# wait for the EXTERNAL-IP and send it a few requests.
#
# Run it through `make demo` (which installs the Debian packages and builds
# bin/ first). Safe to run again: it reuses a test bed that is up, and
# `helm upgrade --install` / `kubectl apply` change nothing that is already
# right. Every network address it talks to lives inside the test bed's
# network namespaces (10.100.0.0/16, 198.51.100.0/24).
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=$ROOT/bin
STATE=/run/directlb-testbed
LOCK=/var/tmp/directlb-testbed.lock
export KUBECONFIG=$STATE/kubeconfig
export PATH=$BIN:$PATH

RELEASE=directlb
NS=directlb-system
CHART=$ROOT/charts/directlb
VALUES=$CHART/ci/testbed-values.yaml
CONTROLLER=$RELEASE-controller # the chart drops "directlb" from a release called directlb
AGENT=$RELEASE-node-agent
# localcloud's default access key (docs/localcloud.md).
ACCESS_KEY=AKIDLOCALCLOUD
SECRET_KEY=localcloud-secret
LOCALCLOUD=http://10.100.0.3:4566
# localcloud's /admin listens on the cloud namespace's loopback only.
ADMIN="nsenter --net=/run/netns/dlb-cloud curl -s http://127.0.0.1:4567"

START=$SECONDS
step() { printf '\n\033[1m==> %s\033[0m  (%ds)\n' "$*" $((SECONDS - START)); }
info() { printf '    %s\n' "$*"; }

# On any failure: say where to look.
on_error() {
	local rc=$? line=$1
	{
		echo
		echo "make demo FAILED (line $line, exit $rc) after $((SECONDS - START))s."
		echo "Where to look:"
		echo "  test bed daemons:  $STATE/logs/*.log (etcd, kube-apiserver, containerd-node-<i>, kubelet-node-<i>, cni-node-<i>, localcloud)"
		echo "  pod logs:          KUBECONFIG=$KUBECONFIG $BIN/kubectl logs -n <namespace> <pod>"
		echo "  events:            KUBECONFIG=$KUBECONFIG $BIN/kubectl get events -A --sort-by=.lastTimestamp"
		echo "  cloud state:       $ADMIN/admin/state"
		echo "  start over:        make down && make demo"
	} >&2
	exit "$rc"
}
trap 'on_error $LINENO' ERR

die() {
	echo "error: $*" >&2
	false || on_error "${BASH_LINENO[0]}"
}

# wait_for <seconds> <what> <command...>: run the command every second until
# it succeeds; fail with <what> after <seconds>.
wait_for() {
	local limit=$1 what=$2 begin=$SECONDS
	shift 2
	until "$@" >/dev/null 2>&1; do
		if ((SECONDS - begin >= limit)); then
			die "timed out after ${limit}s waiting for: $what"
		fi
		sleep 1
	done
}

[[ $(id -u) == 0 ]] || { echo "error: make demo needs root (network namespaces, cgroups, BPF)" >&2; exit 1; }
for b in dlb-testbed kubectl helm lb-controller node-agent localcloud kube-apiserver; do
	[[ -x $BIN/$b ]] || { echo "error: $BIN/$b is missing; run 'make demo' (it builds bin/ first), not hack/demo.sh alone" >&2; exit 1; }
done

# ---------------------------------------------------------------------------
step "Test bed (3 nodes, localcloud as the cloud)"
bed_answers() { kubectl get --raw=/readyz >/dev/null 2>&1; }
bed_has_localcloud() { grep -q '"localcloudURL": *"http' "$STATE/topology.json" 2>/dev/null; }
# The demo holds the test bed's lock (an flock, like dlb-testbed and the e2e
# tests) from when the bed is up until it exits, so an e2e run started
# meanwhile waits instead of replacing the bed under it. An e2e run that
# holds the lock is using a bed of its own (and removes it at its end): wait.
exec 9>>"$LOCK"
take_lock() {
	if ! flock -n 9; then
		info "the test bed is in use by process $(cat "$LOCK" 2>/dev/null || echo '?') (an e2e run?); waiting up to 15 minutes"
		flock -w 900 9 || die "the test bed is still in use after 15 minutes (pid $(cat "$LOCK" 2>/dev/null || echo '?'))"
	fi
	echo $$ >"$LOCK"
}
take_lock
if [[ -e $STATE/topology.json ]]; then
	bed_answers || die "a test bed exists in $STATE but its apiserver does not answer; 'make down' removes it, then run 'make demo' again"
	bed_has_localcloud || die "the test bed in $STATE runs without localcloud ('make up' makes one like that); 'make down', then 'make demo'"
	info "reusing the test bed that is up in $STATE"
else
	flock -u 9 # dlb-testbed up takes the lock itself
	# 9>&-: the daemons it starts must not inherit the lock's descriptor.
	dlb-testbed up --localcloud --bin-dir "$BIN" 9>&-
	take_lock
	bed_answers && bed_has_localcloud ||
		die "the test bed went away right after 'up' (another process removed it?); run 'make demo' again"
fi
kubectl get nodes -o wide

# ---------------------------------------------------------------------------
step "helm install directlb (lb-controller ×2, node-agent on every node)"
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
# The controller's cloud credentials: localcloud's key, in the Secret the
# test-bed values name (read by the kubelet through secretKeyRef).
kubectl -n "$NS" create secret generic localcloud-credentials \
	--from-literal=AWS_ACCESS_KEY_ID=$ACCESS_KEY \
	--from-literal=AWS_SECRET_ACCESS_KEY=$SECRET_KEY \
	--dry-run=client -o yaml | kubectl apply -f -
helm upgrade --install "$RELEASE" "$CHART" -n "$NS" -f "$VALUES" \
	--wait --timeout 3m |
	sed -n '1,/^NOTES:/p' | grep -v '^NOTES:' # the NOTES are for real clusters

step "Waiting for the controller (2 replicas) and a node agent on every node"
kubectl -n "$NS" rollout status deployment/"$CONTROLLER" --timeout=120s
kubectl -n "$NS" rollout status daemonset/"$AGENT" --timeout=120s
# Each agent reports on the kube-proxy-compatible healthz port once it has
# programmed the Services (lastUpdated stops being zero).
for ip in $(kubectl get nodes -o jsonpath='{range .items[*]}{.status.addresses[?(@.type=="InternalIP")].address}{"\n"}{end}'); do
	wait_for 60 "node agent on $ip synced (http://$ip:10256/healthz)" \
		bash -c "curl -fsS --max-time 2 http://$ip:10256/healthz | grep -q lastUpdated && ! curl -fsS --max-time 2 http://$ip:10256/healthz | grep -q '\"lastUpdated\":\"0001-'"
done
kubectl get daemonsets -A
kubectl -n "$NS" get pods -o wide

# ---------------------------------------------------------------------------
step "kubectl apply -f examples/  (3 echo pods, a Service annotated service.directlb.io/direct-access: \"true\")"
# The Service first: the webhook gives a pod its readiness gate only when a
# direct-access Service selects it at creation.
kubectl apply -f "$ROOT/examples/echo-service.yaml"
kubectl apply -f "$ROOT/examples/"
begin=$SECONDS
ext=""
while :; do
	ext=$(kubectl get service echo -o jsonpath='{.status.loadBalancer.ingress[0].ip}' 2>/dev/null || true)
	[[ -n $ext ]] && break
	((SECONDS - begin < 120)) || die "no EXTERNAL-IP on service/echo after 120s; see 'kubectl describe service echo' and the controller's log"
	sleep 0.5
done
info "EXTERNAL-IP $ext after $((SECONDS - begin))s"

step "Waiting for the echo pods, then for the load balancer to report them healthy"
kubectl rollout status deployment/echo --timeout=180s
wait_for 60 "http://$ext/hostname answers" curl -fsS --max-time 2 "http://$ext/hostname"
info "serving through the load balancer $((SECONDS - begin))s after kubectl apply"

gates=$(kubectl get pods -l app=echo -o jsonpath='{range .items[*]}{.spec.readinessGates[*].conditionType}{"\n"}{end}' | sort | uniq -c | sed 's/^ *//')
info "readiness gates on the echo pods: ${gates:-none (the readiness-gate webhook is off: webhook.enabled, docs/chart.md)}"

step "kubectl get svc"
kubectl get svc
step "kubectl get pods -o wide"
kubectl get pods -o wide -l app=echo
step "node-agent service list on node-1  (its pinned BPF maps, read offline: directlb's ipvsadm -Ln)"
"$BIN/node-agent" service list --bpf-root=/sys/fs/bpf/directlb/node-1 | sed 's/^/    /' ||
	die "node-agent service list could not read node-1's maps"

# ---------------------------------------------------------------------------
step "10 requests to http://$ext/  (each a new connection; the echo pod answers with its name)"
declare -A seen=()
failed=0
for i in $(seq 1 10); do
	if body=$(curl -fsS --max-time 3 "http://$ext/hostname"); then
		printf '    %2d  %s\n' "$i" "$body"
		seen[$body]=$((${seen[$body]:-0} + 1))
	else
		printf '    %2d  (failed)\n' "$i"
		failed=$((failed + 1))
	fi
done
info "${#seen[@]} different pods answered, $failed requests failed"
for p in "${!seen[@]}"; do info "  $p: ${seen[$p]}"; done
info "pod IPs are the load balancer's targets:"
nsenter --net=/run/netns/dlb-cloud curl -fsS --max-time 5 "http://127.0.0.1:4567/admin/state" | tr -d ' \n\t' |
	grep -oE '"ip":"[0-9.]+","port":[0-9]+,"state":"[a-z]+"' | tr -d '"' | sed 's/^/      /' || true
((failed == 0)) || die "$failed of 10 requests through $ext failed"

step "Warning events in the example's namespace (its own defaults must raise none)"
# The kubelets' CgroupV1 warning on each Node is the machine's (hybrid
# cgroups), not the example's; every other Warning counts.
warnings=$(kubectl get events --field-selector type=Warning,reason!=CgroupV1 -o custom-columns='KIND:.involvedObject.kind,NAME:.involvedObject.name,REASON:.reason,MESSAGE:.message' --no-headers 2>/dev/null || true)
if [[ -n $warnings ]]; then
	printf '%s\n' "$warnings" | sed 's/^/    /'
	die "the example raised Warning events (above)"
fi
info "none"

# ---------------------------------------------------------------------------
cat <<EOF

==> Done in $((SECONDS - START))s. Look around:

    export KUBECONFIG=$KUBECONFIG
    $BIN/kubectl get svc,pods -o wide
    $BIN/kubectl -n $NS get pods -o wide          # lb-controller ×2, node-agent ×3, no kube-proxy
    $BIN/kubectl scale deployment echo --replicas=5 && $BIN/kubectl get pods -w
    curl http://$ext/hostname                     # the load balancer (inside the test bed)
    $ADMIN/admin/state   # localcloud (its /admin is on the cloud namespace's loopback): load balancers, target groups, target health
    $BIN/dlb-testbed status                       # nodes, processes
    ls $STATE/logs/                               # daemons' logs; pods': kubectl logs

Tear down (everything, cloud included):  make down
EOF
