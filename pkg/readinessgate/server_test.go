package readinessgate

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"testing"
	"time"
)

// The webhook server's readiness follows its serving, and it keeps
// accepting connections for ShutdownDelay after it is told to stop.
func TestServerReadinessAndShutdownDelay(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	ready := make(chan struct{})
	// A certificate is never asked for: the test only dials TCP.
	noCert := func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		return nil, errors.New("no certificate in this test")
	}
	s := &Server{Addr: addr, Handler: &Mutator{}, Ready: ready, ShutdownDelay: 700 * time.Millisecond, GetCertificate: noCert}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Start(ctx) }()

	time.Sleep(100 * time.Millisecond)
	if s.Checker(nil) == nil {
		t.Fatal("ready before its certificate is there")
	}
	close(ready)
	deadline := time.Now().Add(5 * time.Second)
	for s.Checker(nil) != nil {
		select {
		case err := <-done:
			t.Fatalf("stopped before serving: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("not ready 5s after its certificate")
		}
		time.Sleep(10 * time.Millisecond)
	}
	dial := func() error {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err
	}
	if err := dial(); err != nil {
		t.Fatalf("ready but not listening: %v", err)
	}

	cancel()
	time.Sleep(100 * time.Millisecond)
	if s.Checker(nil) == nil {
		t.Error("still ready after it was told to stop")
	}
	if err := dial(); err != nil {
		t.Errorf("stopped serving before its shutdown delay: %v", err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("did not stop within 5s")
	}
	if err := dial(); err == nil {
		t.Error("still listening after Start returned")
	}
}
