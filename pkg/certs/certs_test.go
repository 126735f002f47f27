package certs

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"net"
	"testing"
	"time"
)

func parse(t *testing.T, b []byte) *x509.Certificate {
	t.Helper()
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatal("no PEM block")
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// verify checks that the serving certificate chains to the bundle for host.
func verify(t *testing.T, data map[string][]byte, host string, at time.Time) error {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data[KeyCABundle]) {
		t.Fatal("bad bundle")
	}
	_, err := parse(t, data[KeyCert]).Verify(x509.VerifyOptions{Roots: pool, DNSName: host, CurrentTime: at})
	return err
}

func TestRenew(t *testing.T) {
	const v = 90 * 24 * time.Hour
	t0 := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	hosts := []string{"10.100.0.2"}

	first, changed, err := Renew(nil, hosts, v, t0)
	if err != nil || !changed {
		t.Fatalf("first: changed %v, err %v", changed, err)
	}
	if err := verify(t, first, "10.100.0.2", t0); err != nil {
		t.Fatalf("fresh certificate does not verify: %v", err)
	}
	if ips := parse(t, first[KeyCert]).IPAddresses; len(ips) != 1 || !ips[0].Equal(net.ParseIP("10.100.0.2")) {
		t.Errorf("IP SANs %v", ips)
	}

	tests := []struct {
		name        string
		at          time.Time
		hosts       []string
		wantChanged bool
		newCA       bool
	}{
		{"valid: nothing to do", t0.Add(24 * time.Hour), hosts, false, false},
		{"just before a third left", t0.Add(v*2/3 - time.Hour), hosts, false, false},
		{"serving certificate due", t0.Add(v*2/3 + 2*time.Hour), hosts, true, false},
		{"new host", t0.Add(time.Hour), []string{"10.100.0.2", "web.ns.svc"}, true, false},
		{"CA due", t0.Add(4*v*2/3 + 2*time.Hour), hosts, true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, changed, err := Renew(first, tt.hosts, v, tt.at)
			if err != nil {
				t.Fatal(err)
			}
			if changed != tt.wantChanged {
				t.Fatalf("changed %v, want %v", changed, tt.wantChanged)
			}
			if gotNewCA := !bytes.Equal(got[KeyCACert], first[KeyCACert]); gotNewCA != tt.newCA {
				t.Fatalf("new CA %v, want %v", gotNewCA, tt.newCA)
			}
			for _, h := range tt.hosts {
				if err := verify(t, got, h, tt.at); err != nil {
					t.Errorf("host %s: %v", h, err)
				}
			}
			if tt.newCA && !bytes.Contains(got[KeyCABundle], first[KeyCACert]) {
				t.Error("CA rotation dropped the old CA from the bundle before it expired")
			}
			if !tt.wantChanged && !bytes.Equal(got[KeyCert], first[KeyCert]) {
				t.Error("unchanged data has a different certificate")
			}
		})
	}
}
