package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/directlb/directlb/internal/namedns"
	"github.com/directlb/directlb/internal/privileged"
)

// A netns of our own holds kube-proxy-like leftovers; the host's firewall
// is never touched.
func testNetns(t *testing.T) Runner {
	t.Helper()
	privileged.Require(t, "creates a network namespace")
	privileged.RequireTools(t, "the test writes kube-proxy-like rules to clean up", "ip", "iptables-restore", "nft")
	b := make([]byte, 4)
	rand.Read(b)
	ns := "dlbt-agent-" + hex.EncodeToString(b)
	if err := namedns.Create(ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := namedns.Delete(ns); err != nil {
			t.Error(err)
		}
	})
	return func(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
		return ExecRunner(ctx, stdin, "ip", append([]string{"netns", "exec", ns, name}, args...)...)
	}
}

const kubeProxyRules = `*nat
:KUBE-SERVICES - [0:0]
:KUBE-SVC-ABC - [0:0]
:KUBE-SEP-XYZ - [0:0]
:KUBE-POSTROUTING - [0:0]
:OTHER-CHAIN - [0:0]
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A POSTROUTING -j OTHER-CHAIN
-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-ABC
-A KUBE-SVC-ABC -j KUBE-SEP-XYZ
-A KUBE-SEP-XYZ -p tcp -m tcp -j DNAT --to-destination 10.1.0.1:8080
COMMIT
*filter
:KUBE-FORWARD - [0:0]
-A FORWARD -j KUBE-FORWARD
-A KUBE-FORWARD -j ACCEPT
COMMIT
`

func TestCleanupKubeProxyLeftovers(t *testing.T) {
	run := testNetns(t)
	ctx := context.Background()
	if _, err := run(ctx, []byte(kubeProxyRules), "iptables-restore"); err != nil {
		t.Fatal(err)
	}
	for _, fam := range []string{"ip", "ip6"} {
		if _, err := run(ctx, nil, "nft", "add", "table", fam, "kube-proxy"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := run(ctx, nil, "nft", "add", "table", "ip", "someone-else"); err != nil {
		t.Fatal(err)
	}

	if err := CleanupKubeProxy(ctx, run); err != nil {
		t.Fatalf("cleanup: %v", err)
	}
	// Twice is fine: nothing left is nothing to do.
	if err := CleanupKubeProxy(ctx, run); err != nil {
		t.Fatalf("second cleanup: %v", err)
	}

	for _, table := range []string{"nat", "filter"} {
		out, err := run(ctx, nil, "iptables-save", "-t", table)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(out), "KUBE-") {
			t.Errorf("table %s still has kube-proxy rules:\n%s", table, out)
		}
		if table == "nat" && !strings.Contains(string(out), "-A POSTROUTING -j OTHER-CHAIN") {
			t.Errorf("cleanup removed a rule that is not kube-proxy's:\n%s", out)
		}
	}
	out, err := run(ctx, nil, "nft", "list", "tables")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), "kube-proxy") {
		t.Errorf("nft tables left:\n%s", out)
	}
	if !strings.Contains(string(out), "someone-else") {
		t.Errorf("cleanup removed another table:\n%s", out)
	}
}
