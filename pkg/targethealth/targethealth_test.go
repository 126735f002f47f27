package targethealth

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/directlb/directlb/pkg/cloud"
)

// countingCloud counts DescribeTargetHealth calls per target group; each
// call blocks until release is closed (nil: returns at once).
type countingCloud struct {
	mu      sync.Mutex
	calls   map[string]int
	release chan struct{}
	started chan struct{}
	err     error
	version atomic.Int32
}

func (f *countingCloud) DescribeTargetHealth(_ context.Context, arn string) ([]cloud.TargetHealth, error) {
	f.mu.Lock()
	if f.calls == nil {
		f.calls = map[string]int{}
	}
	f.calls[arn]++
	rel, started, err := f.release, f.started, f.err
	f.mu.Unlock()
	if started != nil {
		started <- struct{}{}
	}
	if rel != nil {
		<-rel
	}
	if err != nil {
		return nil, err
	}
	v := f.version.Load()
	return []cloud.TargetHealth{{Target: cloud.Target{IP: "10.0.0.1", Port: 8080 + v}, State: cloud.TargetHealthy}}, nil
}

func (f *countingCloud) count(arn string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[arn]
}

type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }

func TestSingleFlight(t *testing.T) {
	f := &countingCloud{release: make(chan struct{}), started: make(chan struct{}, 1)}
	c := NewCache(f, time.Second)
	const callers = 50
	var wg sync.WaitGroup
	results := make([][]cloud.TargetHealth, callers)
	errs := make([]error, callers)
	first := make(chan struct{})
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i > 0 {
				<-first
			}
			results[i], errs[i] = c.Read(context.Background(), "tg-a", 0)
		}()
		if i == 0 {
			<-f.started // the one call is in flight before the others ask
			close(first)
		}
	}
	// Let the others reach the wait, then answer the one call.
	time.Sleep(50 * time.Millisecond)
	close(f.release)
	wg.Wait()
	if got := f.count("tg-a"); got != 1 {
		t.Fatalf("%d concurrent callers made %d cloud calls, want 1", callers, got)
	}
	for i := range callers {
		if errs[i] != nil {
			t.Fatalf("caller %d: %v", i, errs[i])
		}
		if diff := cmp.Diff(results[0], results[i]); diff != "" {
			t.Fatalf("caller %d got another result (-first +this):\n%s", i, diff)
		}
	}
}

func TestPerTargetGroup(t *testing.T) {
	f := &countingCloud{}
	c := NewCache(f, time.Second)
	for _, arn := range []string{"tg-a", "tg-b", "tg-a", "tg-b"} {
		if _, err := c.Read(context.Background(), arn, 0); err != nil {
			t.Fatal(err)
		}
	}
	if a, b := f.count("tg-a"), f.count("tg-b"); a != 1 || b != 1 {
		t.Fatalf("calls: tg-a %d, tg-b %d; want 1 each", a, b)
	}
}

func TestTTL(t *testing.T) {
	tests := []struct {
		name      string
		age       time.Duration
		maxAge    time.Duration
		wantCalls int
	}{
		{name: "young result reused", age: 500 * time.Millisecond, wantCalls: 1},
		{name: "at the TTL reused", age: time.Second, wantCalls: 1},
		{name: "past the TTL read again", age: 1001 * time.Millisecond, wantCalls: 2},
		{name: "caller accepts older", age: 10 * time.Minute, maxAge: 15 * time.Minute, wantCalls: 1},
		{name: "caller wants newer than the TTL", age: 200 * time.Millisecond, maxAge: 100 * time.Millisecond, wantCalls: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &countingCloud{}
			clk := &clock{t: time.Unix(1000, 0)}
			c := NewCache(f, time.Second)
			c.Now = clk.now
			if _, err := c.Read(context.Background(), "tg", 0); err != nil {
				t.Fatal(err)
			}
			clk.advance(tt.age)
			if _, err := c.Read(context.Background(), "tg", tt.maxAge); err != nil {
				t.Fatal(err)
			}
			if got := f.count("tg"); got != tt.wantCalls {
				t.Fatalf("cloud calls %d, want %d", got, tt.wantCalls)
			}
		})
	}
}

func TestInvalidate(t *testing.T) {
	f := &countingCloud{}
	c := NewCache(f, time.Minute)
	ctx := context.Background()
	if _, err := c.Read(ctx, "tg", 0); err != nil {
		t.Fatal(err)
	}
	f.version.Store(1) // the targets change (a registration)
	c.Invalidate("tg")
	got, err := c.Read(ctx, "tg", 0)
	if err != nil {
		t.Fatal(err)
	}
	if f.count("tg") != 2 || got[0].Port != 8081 {
		t.Fatalf("after Invalidate: %d calls, port %d; want a new call seeing 8081", f.count("tg"), got[0].Port)
	}
	if _, err := c.Read(ctx, "tg", 0); err != nil || f.count("tg") != 2 {
		t.Fatalf("the new result is cached again: %d calls (err %v), want 2", f.count("tg"), err)
	}
}

// A call that started before a change must not answer callers that come
// after the change.
func TestInvalidateInFlight(t *testing.T) {
	f := &countingCloud{release: make(chan struct{}), started: make(chan struct{}, 2)}
	c := NewCache(f, time.Minute)
	ctx := context.Background()
	old := make(chan []cloud.TargetHealth, 1)
	go func() {
		ts, _ := c.Read(ctx, "tg", 0)
		old <- ts
	}()
	<-f.started
	f.version.Store(1)
	c.Invalidate("tg")
	fresh := make(chan []cloud.TargetHealth, 1)
	go func() {
		ts, _ := c.Read(ctx, "tg", 0)
		fresh <- ts
	}()
	<-f.started // a second call, not a join of the first
	close(f.release)
	if ts := <-old; len(ts) != 1 {
		t.Fatalf("first caller got %v", ts)
	}
	if ts := <-fresh; ts[0].Port != 8081 {
		t.Fatalf("caller after Invalidate got port %d, want 8081 (the read after the change)", ts[0].Port)
	}
	if got := f.count("tg"); got != 2 {
		t.Fatalf("cloud calls %d, want 2", got)
	}
	if _, err := c.Read(ctx, "tg", 0); err != nil || f.count("tg") != 2 {
		t.Fatalf("the second result is cached: %d calls, want 2", f.count("tg"))
	}
}

func TestErrorsAreNotCached(t *testing.T) {
	f := &countingCloud{err: errors.New("throttled")}
	c := NewCache(f, time.Minute)
	ctx := context.Background()
	if _, err := c.Read(ctx, "tg", 0); err == nil {
		t.Fatal("want the cloud's error")
	}
	f.mu.Lock()
	f.err = nil
	f.mu.Unlock()
	if _, err := c.Read(ctx, "tg", 0); err != nil {
		t.Fatalf("second read: %v", err)
	}
	if got := f.count("tg"); got != 2 {
		t.Fatalf("cloud calls %d, want 2 (a failed call is not reused)", got)
	}
}

// A caller that gives up does not cancel the call the others wait for.
func TestCallerCancelDoesNotCancelTheCall(t *testing.T) {
	f := &countingCloud{release: make(chan struct{}), started: make(chan struct{}, 1)}
	c := NewCache(f, time.Minute)
	cctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { _, err := c.Read(cctx, "tg", 0); errc <- err }()
	<-f.started
	done := make(chan error, 1)
	go func() { _, err := c.Read(context.Background(), "tg", 0); done <- err }()
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled caller: %v", err)
	}
	close(f.release)
	if err := <-done; err != nil {
		t.Fatalf("other caller: %v", err)
	}
	if got := f.count("tg"); got != 1 {
		t.Fatalf("cloud calls %d, want 1", got)
	}
}

func TestForget(t *testing.T) {
	f := &countingCloud{}
	c := NewCache(f, time.Minute)
	ctx := context.Background()
	_, _ = c.Read(ctx, "tg", 0)
	c.Forget("tg")
	_, _ = c.Read(ctx, "tg", 0)
	if got := f.count("tg"); got != 2 {
		t.Fatalf("cloud calls %d, want 2", got)
	}
}
