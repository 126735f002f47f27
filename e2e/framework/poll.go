package framework

import (
	"context"
	"testing"
	"time"
)

// Poll calls cond every 200 ms until it is true or timeout passes; the
// last error or "not yet" state is in the failure message.
func Poll(t *testing.T, timeout time.Duration, what string, cond func(ctx context.Context) (bool, string)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	last := ""
	for {
		ok, state := cond(ctx)
		if ok {
			return
		}
		last = state
		select {
		case <-ctx.Done():
			t.Fatalf("%s: not within %s; last: %s", what, timeout, last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}
