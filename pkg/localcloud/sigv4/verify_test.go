package sigv4

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
)

var creds = Credentials{AccessKeyID: "AKID", SecretAccessKey: "secret"}

// signed returns a request signed by the SDK's signer, as a client sends it.
func signed(t *testing.T, body, secret string, at time.Time) *http.Request {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, "http://127.0.0.1:4566/", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")
	sum := sha256.Sum256([]byte(body))
	err = v4.NewSigner().SignHTTP(context.Background(), aws.Credentials{AccessKeyID: "AKID", SecretAccessKey: secret},
		req, hex.EncodeToString(sum[:]), "elasticloadbalancing", "us-east-1", at)
	if err != nil {
		t.Fatal(err)
	}
	// What a server sees: Host in r.Host.
	req.Host = req.URL.Host
	return req
}

func TestVerify(t *testing.T) {
	now := time.Now().UTC()
	body := "Action=DescribeLoadBalancers&Version=2015-12-01"
	for _, tc := range []struct {
		name   string
		req    func() *http.Request
		code   string
		verify time.Time
	}{
		{"good", func() *http.Request { return signed(t, body, "secret", now) }, "", now},
		{"wrong secret", func() *http.Request { return signed(t, body, "nope", now) }, "SignatureDoesNotMatch", now},
		{"body changed", func() *http.Request {
			r := signed(t, body, "secret", now)
			r.Body = http.NoBody
			r.ContentLength = 0
			return r
		}, "SignatureDoesNotMatch", now},
		{"signed header changed", func() *http.Request {
			r := signed(t, body, "secret", now)
			r.Host = "10.0.0.1:4566"
			return r
		}, "SignatureDoesNotMatch", now},
		{"unsigned", func() *http.Request {
			r := signed(t, body, "secret", now)
			r.Header.Del("Authorization")
			return r
		}, "MissingAuthenticationToken", now},
		{"other access key", func() *http.Request {
			r := signed(t, body, "secret", now)
			r.Header.Set("Authorization", strings.Replace(r.Header.Get("Authorization"), "Credential=AKID/", "Credential=OTHER/", 1))
			return r
		}, "InvalidClientTokenId", now},
		{"too old", func() *http.Request { return signed(t, body, "secret", now.Add(-20*time.Minute)) }, "SignatureDoesNotMatch", now},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := Verify(tc.req(), creds, tc.verify)
			got := ""
			var e *Error
			if errors.As(err, &e) {
				got = e.Code
			} else if err != nil {
				got = "other: " + err.Error()
			}
			if got != tc.code {
				t.Errorf("Verify: %v; want code %q", err, tc.code)
			}
		})
	}
}
