package localcloud_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap"

	"github.com/directlb/directlb/pkg/localcloud"
	"github.com/directlb/directlb/pkg/localcloud/faults"
	"github.com/directlb/directlb/pkg/localcloud/store"
)

func TestAdmin(t *testing.T) {
	cfg := localcloud.DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.AdminListen = "127.0.0.1:0"
	cfg.StateDir = ""
	cfg.Datapath = false
	cfg.FaultThrottle = map[string]string{"RegisterTargets": "0.5"}
	srv, err := localcloud.New(cfg, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	admin := "http://" + srv.AdminAddr()

	do := func(method, path, body string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, admin+path, strings.NewReader(body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	// Faults from flags, then replaced through the endpoint.
	_, body := do("GET", "/admin/faults", "")
	var spec faults.Spec
	if err := json.Unmarshal([]byte(body), &spec); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(faults.Spec{Rules: map[string]faults.Rule{"RegisterTargets": {Throttle: 0.5}}}, spec); diff != "" {
		t.Errorf("faults from flags (-want +got):\n%s", diff)
	}
	if code, body := do("PUT", "/admin/faults", `{"rules":{"*":{"serverError":0.2,"latency":"5ms"}},"limits":{"DescribeTags":{"rate":10,"burst":40}}}`); code != 200 {
		t.Fatalf("PUT faults: %d %s", code, body)
	}
	want := faults.Spec{Rules: map[string]faults.Rule{"*": {ServerError: 0.2, Latency: faults.Duration(5e6)}}, Limits: map[string]faults.Limit{"DescribeTags": {Rate: 10, Burst: 40}}}
	if diff := cmp.Diff(want, srv.Faults().Spec()); diff != "" {
		t.Errorf("faults after PUT (-want +got):\n%s", diff)
	}
	if code, _ := do("PUT", "/admin/faults", `{"rules":{"*":{"throttle":2}}}`); code != 400 {
		t.Errorf("PUT of an invalid fraction: %d, want 400", code)
	}

	// State: load balancers, target groups, targets with their states.
	st := srv.Store()
	lb, _ := st.CreateLoadBalancer("adm", "", nil)
	tg, _ := st.CreateTargetGroup("adm", "TCP", 80, "", store.DefaultHealthCheck(), nil)
	if _, err := st.CreateListener(lb.ARN, "TCP", 80, tg.ARN, nil); err != nil {
		t.Fatal(err)
	}
	_ = st.RegisterTargets(tg.ARN, []store.Target{{IP: "10.0.0.9"}})
	_, body = do("GET", "/admin/state", "")
	var state localcloud.AdminState
	if err := json.Unmarshal([]byte(body), &state); err != nil {
		t.Fatal(err)
	}
	if len(state.LoadBalancers) != 1 || len(state.TargetGroups) != 1 || len(state.TargetGroups[0].Targets) != 1 ||
		state.TargetGroups[0].Targets[0].State != "healthy" {
		t.Errorf("admin state: %s", body)
	}
	if code, body := do("GET", "/metrics", ""); code != 200 || !strings.Contains(body, "go_goroutines") {
		t.Errorf("/metrics: %d", code)
	}
}

func TestDrainEndsWithoutDatapath(t *testing.T) {
	cfg := localcloud.DefaultConfig()
	cfg.Listen, cfg.StateDir, cfg.Datapath = "127.0.0.1:0", "", false
	srv, err := localcloud.New(cfg, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	st := srv.Store()
	tg, _ := st.CreateTargetGroup("drain", "TCP", 80, "", store.DefaultHealthCheck(), nil)
	if _, err := st.ModifyTargetGroupAttributes(tg.ARN, map[string]string{store.AttrDeregistrationDelay: "1"}); err != nil {
		t.Fatal(err)
	}
	_ = st.RegisterTargets(tg.ARN, []store.Target{{IP: "10.0.0.1"}})
	if err := st.DeregisterTargets(tg.ARN, []store.Target{{IP: "10.0.0.1"}}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for {
		got, _ := st.GetTargetGroup(tg.ARN)
		if len(got.Targets) == 0 {
			break
		}
		if time.Since(start) > 3*time.Second {
			t.Fatalf("target still draining 3s after deregistration with a 1s delay: %+v", got.Targets)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if d := time.Since(start); d < 900*time.Millisecond {
		t.Errorf("drain ended after %s, before the 1s delay", d)
	}
}
