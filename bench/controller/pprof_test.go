package controller

import (
	"fmt"
	"net"
	"net/http"
	_ "net/http/pprof" // the handlers on http.DefaultServeMux
	"os"
	"testing"
)

// servePprof serves net/http/pprof on DLB_BENCH_PPROF (e.g. 127.0.0.1:6060)
// while the benchmark runs, for a goroutine dump or a profile of a slow
// stretch; nothing when it is unset.
func servePprof(b *testing.B) {
	addr := os.Getenv("DLB_BENCH_PPROF")
	if addr == "" {
		return
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		b.Fatalf("DLB_BENCH_PPROF=%s: %v", addr, err)
	}
	srv := &http.Server{Handler: http.DefaultServeMux}
	go func() { _ = srv.Serve(ln) }()
	b.Cleanup(func() { srv.Close() })
	fmt.Printf("  (pprof on http://%s/debug/pprof/)\n", ln.Addr())
}
