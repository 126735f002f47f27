package framework

import (
	"context"
	"errors"
	"maps"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// MaxLoad bounds the load loops and readiness sampling of the tests that
// run load while they operate directlb.
const MaxLoad = 6 * time.Minute

// Load is a bounded open-loop load generator: rate requests per second
// until stop or maxDur, and at most rate×maxDur requests. An answer counts
// only if it is a 200 whose body starts with prefix (a pod name).
type Load struct {
	prefix        string
	total, failed atomic.Int64
	mu            sync.Mutex
	errs          map[string]int
}

// NewLoad is a Load whose answers start with prefix.
func NewLoad(prefix string) *Load {
	return &Load{prefix: prefix, errs: map[string]int{}}
}

// Total is the number of requests made so far.
func (l *Load) Total() int64 { return l.total.Load() }

// Failed is the number of requests that failed so far.
func (l *Load) Failed() int64 { return l.failed.Load() }

// Errors counts the failures by kind of connection and of error.
func (l *Load) Errors() map[string]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return maps.Clone(l.errs)
}

// Run sends rate requests a second to url (on new connections, or over
// keep-alive ones) until ctx ends or maxDur passes, then calls wg.Done.
func (l *Load) Run(ctx context.Context, url string, rate int, keepAlive bool, maxDur time.Duration, wg *sync.WaitGroup) {
	defer wg.Done()
	tr := &http.Transport{DisableKeepAlives: !keepAlive, MaxIdleConnsPerHost: 16, MaxConnsPerHost: 16, IdleConnTimeout: 30 * time.Second}
	if !keepAlive {
		tr.MaxConnsPerHost = 0
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 3 * time.Second}
	ctx, cancel := context.WithTimeout(ctx, maxDur)
	defer cancel()
	limit := int64(rate) * int64(maxDur/time.Second)
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	sem := make(chan struct{}, 256)
	var inflight sync.WaitGroup
	defer inflight.Wait()
	for sent := int64(0); sent < limit; sent++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return
		}
		inflight.Add(1)
		go func() {
			defer inflight.Done()
			defer func() { <-sem }()
			err := CheckGet(client, url, l.prefix)
			l.total.Add(1)
			if err != nil {
				l.failed.Add(1)
				l.mu.Lock()
				kind := "new-conn"
				if keepAlive {
					kind = "keep-alive"
				}
				l.errs[kind+": "+errClass(err)]++
				l.mu.Unlock()
			}
		}()
	}
}

func errClass(err error) string {
	s := err.Error()
	for _, k := range []string{"connection refused", "connection reset", "EOF", "timeout", "deadline", "status"} {
		if strings.Contains(s, k) {
			return k
		}
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return "deadline"
	}
	return s
}
