package ipam_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/directlb/directlb/pkg/cloud"
	"github.com/directlb/directlb/pkg/cloud/fake"
	"github.com/directlb/directlb/pkg/cni/ipam"
)

func contextWithTimeout(t *testing.T, d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(t.Context(), d)
}

// node1 is an instance with two ENIs whose pools hold 8 addresses each;
// limit caps each ENI's addresses (primary included), 0: no cap.
func node1(limit int) *fake.ENIs {
	eni := func(i int, pool string) fake.ENISpec {
		return fake.ENISpec{
			NetworkInterface: cloud.NetworkInterface{
				ID: fmt.Sprintf("eni-%d", i), InstanceID: "node-1", DeviceIndex: i,
				MAC: fmt.Sprintf("02:00:00:00:01:%02x", i), PrivateIP: netip.MustParseAddr(fmt.Sprintf("10.0.1.%d", 10+i)),
			},
			Pool: netip.MustParsePrefix(pool), Limit: limit,
		}
	}
	return fake.NewENIs(eni(0, "10.0.1.64/29"), eni(1, "10.0.1.128/29"))
}

func newIPAM(dir string, c cloud.NetworkInterfaces, warm, first int) *ipam.IPAM {
	return ipam.New(ipam.Config{
		Dir: dir, InstanceID: "node-1", Cloud: c, WarmIPTarget: warm, FirstENI: first,
		CloudTimeout: time.Second, Now: func() time.Time { return t0 },
	})
}

func all(string) bool { return true }

// step is one pod operation as the plugin does it: "add" (Allocate, then
// TopUp of its ENI) or "del" (Release).
type step struct {
	op  string
	pod string
	// want is "ip@eni" of the address given (add) or freed (del); "" for
	// none.
	want string
	err  string
	// calls are the cloud calls the step makes (nil: not checked).
	calls map[string]int
	// fail makes these cloud operations fail during the step.
	fail []string
}

const (
	describe = "DescribeNetworkInterfaces"
	assign   = "AssignPrivateIpAddresses"
	unassign = "UnassignPrivateIpAddresses"
)

var none = map[string]int{}

func (s step) run(t *testing.T, ctx context.Context, m *ipam.IPAM) string {
	t.Helper()
	h := holder(s.pod)
	var al ipam.Allocation
	var err error
	switch s.op {
	case "add":
		if al, err = m.Allocate(ctx, h, all); err == nil {
			_ = m.TopUp(ctx, al.ENIID) // the plugin only logs a failed top-up
		}
	case "del":
		var freed []ipam.Allocation
		if freed, err = m.Release(ctx, h); len(freed) == 1 {
			al = freed[0]
		}
	default:
		t.Fatalf("unknown op %q", s.op)
	}
	switch {
	case s.err == "" && err != nil:
		t.Fatalf("%s %s: %v", s.op, s.pod, err)
	case s.err != "" && (err == nil || !strings.Contains(err.Error(), s.err)):
		t.Fatalf("%s %s: error %v, want one with %q", s.op, s.pod, err, s.err)
	}
	if !al.IP.IsValid() {
		return ""
	}
	return al.IP.String() + "@" + al.ENIID
}

// ipamCase is one story for TestIPAM: the pool's settings, the CNI calls in
// order, and what they leave in the cloud.
type ipamCase struct {
	name        string
	warm, first int
	limit       int
	steps       []step
	// cloud is each ENI's secondary addresses in the cloud at the end.
	cloud map[string][]string
}

// ipamCases are TestIPAM's stories, each on a fresh node-1.
var ipamCases = []ipamCase{
	{
		name: "the first pod reads the ENIs and fills the pool with warm+1", warm: 1,
		steps: []step{{op: "add", pod: "web-a", want: "10.0.1.64@eni-0", calls: map[string]int{describe: 1, assign: 1}}},
		cloud: map[string][]string{"eni-0": {"10.0.1.64", "10.0.1.65"}},
	},
	{
		name: "a workload alternates over the ENIs, other workloads start at firstENI", warm: 1,
		steps: []step{
			{op: "add", pod: "web-aaaaa", want: "10.0.1.64@eni-0", calls: map[string]int{describe: 1, assign: 1}},
			{op: "add", pod: "web-bbbbb", want: "10.0.1.128@eni-1", calls: map[string]int{assign: 1}},
			// 1 and 1: the tie goes to eni-0; a pooled address, then a top-up.
			{op: "add", pod: "web-ccccc", want: "10.0.1.65@eni-0", calls: map[string]int{assign: 1}},
			{op: "add", pod: "db-0", want: "10.0.1.66@eni-0", calls: map[string]int{assign: 1}},
			{op: "add", pod: "db-1", want: "10.0.1.129@eni-1", calls: map[string]int{assign: 1}},
		},
		cloud: map[string][]string{"eni-0": {"10.0.1.64", "10.0.1.65", "10.0.1.66", "10.0.1.67"}, "eni-1": {"10.0.1.128", "10.0.1.129", "10.0.1.130"}},
	},
	{
		name: "firstENI 1 wins ties", warm: 1, first: 1,
		steps: []step{
			{op: "add", pod: "web-aaaaa", want: "10.0.1.128@eni-1"},
			{op: "add", pod: "web-bbbbb", want: "10.0.1.64@eni-0"},
			{op: "add", pod: "other-aaaaa", want: "10.0.1.129@eni-1"},
		},
	},
	{
		name: "a pod takes a pooled address; the top-up after it is the only call", warm: 2,
		steps: []step{
			{op: "add", pod: "a", want: "10.0.1.64@eni-0", calls: map[string]int{describe: 1, assign: 1}}, // 3 assigned
			{op: "add", pod: "b", want: "10.0.1.65@eni-0", calls: map[string]int{assign: 1}},              // top-up to 2: .67
			{op: "del", pod: "a", want: "10.0.1.64@eni-0", calls: map[string]int{unassign: 1}},            // 3 free: .64 goes
			{op: "add", pod: "c", want: "10.0.1.66@eni-0", calls: map[string]int{assign: 1}},              // top-up: .64 again
		},
		cloud: map[string][]string{"eni-0": {"10.0.1.64", "10.0.1.65", "10.0.1.66", "10.0.1.67"}},
	},
	{
		name: "ADD again gives the same address, without a cloud call", warm: 1,
		steps: []step{
			{op: "add", pod: "a", want: "10.0.1.64@eni-0"},
			{op: "add", pod: "a", want: "10.0.1.64@eni-0", calls: none},
		},
	},
	{
		name: "warm 0: the address leaves the cloud when its pod goes", warm: 0,
		steps: []step{
			{op: "add", pod: "a", want: "10.0.1.64@eni-0", calls: map[string]int{describe: 1, assign: 1}},
			{op: "del", pod: "a", want: "10.0.1.64@eni-0", calls: map[string]int{unassign: 1}},
			{op: "del", pod: "a", want: "", calls: none},
		},
		cloud: map[string][]string{},
	},
	{
		name: "warm 1: DEL gives back what is beyond warm, the just-freed address first", warm: 1,
		steps: []step{
			{op: "add", pod: "a", want: "10.0.1.64@eni-0"},
			{op: "add", pod: "b", want: "10.0.1.65@eni-0"}, // top-up: .66
			{op: "del", pod: "a", want: "10.0.1.64@eni-0", calls: map[string]int{unassign: 1}},
		},
		cloud: map[string][]string{"eni-0": {"10.0.1.65", "10.0.1.66"}},
	},
	{
		name:  "DEL of a container the pool does not know is a no-op",
		steps: []step{{op: "del", pod: "ghost", want: "", calls: none}},
	},
	{
		name: "a failed unassign keeps the address in the pool, free, and the next pod takes it", warm: 0,
		steps: []step{
			{op: "add", pod: "a", want: "10.0.1.64@eni-0"},
			{op: "del", pod: "a", want: "10.0.1.64@eni-0", fail: []string{unassign}},
			{op: "add", pod: "b", want: "10.0.1.64@eni-0", calls: none},
		},
		cloud: map[string][]string{"eni-0": {"10.0.1.64"}},
	},
	{
		name: "a cloud failure on ADD fails it, naming the ENI", warm: 1,
		steps: []step{
			{op: "add", pod: "a", err: "assign a private address to eni-0: AssignPrivateIpAddresses: InternalError", fail: []string{assign}},
			{op: "add", pod: "a", want: "10.0.1.64@eni-0"}, // the runtime retries
		},
		cloud: map[string][]string{"eni-0": {"10.0.1.64", "10.0.1.65"}},
	},
	{
		name:  "a cloud failure describing the ENIs fails ADD",
		steps: []step{{op: "add", pod: "a", err: "describe the network interfaces of instance node-1", fail: []string{describe}}},
	},
	{
		name: "an ENI that cannot take warm+1 takes 1; a full one hands over to the next", warm: 1, limit: 2,
		steps: []step{
			// 2 is over the limit, then 1 fits; the top-up fails (logged).
			{op: "add", pod: "a", want: "10.0.1.64@eni-0", calls: map[string]int{describe: 1, assign: 3}},
			// eni-0 refuses 2 and 1, eni-1 refuses 2 and takes 1; its top-up fails.
			{op: "add", pod: "b", want: "10.0.1.128@eni-1", calls: map[string]int{assign: 5}},
		},
		cloud: map[string][]string{"eni-0": {"10.0.1.64"}, "eni-1": {"10.0.1.128"}},
	},
	{
		name: "every ENI full fails ADD with the reason per ENI", warm: 0, limit: 1,
		steps: []step{{op: "add", pod: "a", err: "no ENI of instance node-1 can take another address: eni-0: "}},
	},
}

func TestIPAM(t *testing.T) {
	for _, tc := range ipamCases {
		t.Run(tc.name, func(t *testing.T) {
			c := node1(tc.limit)
			m := newIPAM(t.TempDir(), c, tc.warm, tc.first)
			for i, s := range tc.steps {
				before := c.Calls()
				c.Fail = func(op string) error {
					if slices.Contains(s.fail, op) {
						return &cloud.APIError{Op: op, Code: "InternalError", Message: "injected", Retryable: true}
					}
					return nil
				}
				if got := s.run(t, t.Context(), m); got != s.want {
					t.Errorf("step %d, %s %s = %q, want %q", i, s.op, s.pod, got, s.want)
				}
				c.Fail = nil
				if s.calls != nil {
					if diff := cmp.Diff(s.calls, delta(before, c.Calls())); diff != "" {
						t.Errorf("step %d, %s %s: cloud calls (-want +got):\n%s", i, s.op, s.pod, diff)
					}
				}
			}
			if tc.cloud != nil {
				got := map[string][]string{}
				for _, id := range []string{"eni-0", "eni-1"} {
					for _, a := range c.Secondaries(id) {
						got[id] = append(got[id], a.String())
					}
				}
				if diff := cmp.Diff(tc.cloud, got); diff != "" {
					t.Errorf("secondary addresses in the cloud (-want +got):\n%s", diff)
				}
			}
		})
	}
}

func delta(before, after map[string]int) map[string]int {
	out := map[string]int{}
	for op, n := range after {
		if d := n - before[op]; d != 0 {
			out[op] = d
		}
	}
	return out
}

// TestPoolMatchesCloud: whatever the pods do, each ENI's pool is exactly
// its secondary addresses in the cloud, and no address is held twice.
func TestPoolMatchesCloud(t *testing.T) {
	c := node1(0)
	dir := t.TempDir()
	m := newIPAM(dir, c, 1, 0)
	ctx := t.Context()
	for i := range 6 {
		if _, err := m.Allocate(ctx, holder(fmt.Sprintf("web-%d", i)), all); err != nil {
			t.Fatal(err)
		}
	}
	for _, i := range []int{1, 2, 4} {
		if _, err := m.Release(ctx, holder(fmt.Sprintf("web-%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	p, err := ipam.Store{Dir: dir}.Load()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range p.ENIs {
		var pooled []netip.Addr
		for _, a := range e.Addresses {
			pooled = append(pooled, a.IP)
		}
		if diff := cmp.Diff(c.Secondaries(e.ID), pooled, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
			t.Errorf("%s: pool and cloud differ (-cloud +pool):\n%s", e.ID, diff)
		}
		if free := p.Free(e.ID); free > 1 {
			t.Errorf("%s: %d free after DEL, want at most warm (1)", e.ID, free)
		}
	}
}

// TestRecoveredPool: a pool rebuilt from the cloud (its file lost) records
// the ENIs' addresses routed to a veth as held, not free; the container
// whose veth it is adopts its address on its next ADD.
func TestRecoveredPool(t *testing.T) {
	c := node1(0)
	if _, err := c.AssignPrivateIPs(t.Context(), "eni-0", ips("10.0.1.64", "10.0.1.65"), 0); err != nil {
		t.Fatal(err)
	}
	m := ipam.New(ipam.Config{
		Dir: t.TempDir(), InstanceID: "node-1", Cloud: c, WarmIPTarget: 1, CloudTimeout: time.Second,
		Routed: func() (map[netip.Addr]string, error) {
			return map[netip.Addr]string{netip.MustParseAddr("10.0.1.64"): "veth-old"}, nil
		},
	})
	al, err := m.Allocate(t.Context(), holder("new"), all)
	if err != nil || al.IP != netip.MustParseAddr("10.0.1.65") {
		t.Fatalf("a new pod got %v, %v; want the free 10.0.1.65, not the routed 10.0.1.64", al.IP, err)
	}
	al, err = m.Allocate(t.Context(), holder("old"), all) // holder("old") has Veth "veth-old"
	if err != nil || al.IP != netip.MustParseAddr("10.0.1.64") {
		t.Fatalf("the routed pod got %v, %v; want its 10.0.1.64 back", al.IP, err)
	}
	held, err := m.Held(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if h := holder("old"); held[h].IP != netip.MustParseAddr("10.0.1.64") {
		t.Errorf("held after adoption: %v", held)
	}
}

// TestConcurrentAllocate runs ADDs as the runtime does, from separate
// processes' worth of IPAMs on one pool directory: the flock keeps every
// address unique.
func TestConcurrentAllocate(t *testing.T) {
	c := node1(0)
	dir := t.TempDir()
	const n = 12
	var wg sync.WaitGroup
	got := make([]ipam.Allocation, n)
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			m := newIPAM(dir, c, 1, 0)
			got[i], errs[i] = m.Allocate(t.Context(), holder(fmt.Sprintf("p%d", i)), all)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	seen := map[netip.Addr]int{}
	for i, al := range got {
		if j, dup := seen[al.IP]; dup {
			t.Errorf("pods %d and %d both got %s", j, i, al.IP)
		}
		seen[al.IP] = i
	}
	if calls := c.Calls(); calls[describe] != 1 {
		t.Errorf("%d DescribeNetworkInterfaces calls, want 1 (the first ADD's): %v", calls[describe], maps.Clone(calls))
	}
}
