package api

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/xml"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"

	"github.com/directlb/directlb/pkg/localcloud/faults"
	"github.com/directlb/directlb/pkg/localcloud/sigv4"
	"github.com/directlb/directlb/pkg/localcloud/store"
)

func TestStatusesAndCodes(t *testing.T) {
	st, err := store.Open(store.Config{Region: "r1", LBCIDR: netip.MustParsePrefix("198.51.100.0/24")})
	if err != nil {
		t.Fatal(err)
	}
	in := faults.New(faults.Spec{Rules: map[string]faults.Rule{
		"DescribeTags":      {Throttle: 1},
		"DescribeListeners": {ServerError: 1},
	}})
	h, err := New(Config{Store: st, Faults: in, Credentials: sigv4.Credentials{AccessKeyID: "AK", SecretAccessKey: "SK"}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	if _, err := st.CreateLoadBalancer("one", "", nil); err != nil {
		t.Fatal(err)
	}

	call := func(body string) (int, string) {
		req, _ := http.NewRequest(http.MethodPost, srv.URL+"/", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		sum := sha256.Sum256([]byte(body))
		if err := v4.NewSigner().SignHTTP(context.Background(), aws.Credentials{AccessKeyID: "AK", SecretAccessKey: "SK"},
			req, hex.EncodeToString(sum[:]), "elasticloadbalancing", "r1", time.Now()); err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = resp.Body.Close() }()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, tc := range []struct {
		name, body string
		status     int
		code       string
	}{
		{"ok", "Action=DescribeLoadBalancers&Version=2015-12-01", 200, ""},
		{"unknown action", "Action=Frobnicate&Version=2015-12-01", 400, "InvalidAction"},
		{"old version", "Action=DescribeLoadBalancers&Version=2012-06-01", 400, "InvalidParameterValue"},
		{"page size 0", "Action=DescribeLoadBalancers&Version=2015-12-01&PageSize=0", 400, "ValidationError"},
		{"bad marker", "Action=DescribeLoadBalancers&Version=2015-12-01&Marker=%25%25", 400, "ValidationError"},
		{"not found", "Action=DescribeLoadBalancers&Version=2015-12-01&Names.member.1=nope", 400, "LoadBalancerNotFound"},
		{"throttled", "Action=DescribeTags&Version=2015-12-01&ResourceArns.member.1=x", 400, "Throttling"},
		{"5xx", "Action=DescribeListeners&Version=2015-12-01&LoadBalancerArn=x", 503, "ServiceUnavailable"},
		{"instance targets", "Action=CreateTargetGroup&Version=2015-12-01&Name=t&Protocol=TCP&Port=80&TargetType=instance", 400, "ValidationError"},
		{"duplicate tag keys", "Action=CreateLoadBalancer&Version=2015-12-01&Name=two&Tags.member.1.Key=a&Tags.member.1.Value=1&Tags.member.2.Key=a&Tags.member.2.Value=2", 400, "DuplicateTagKeys"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body := call(tc.body)
			if status != tc.status {
				t.Errorf("status %d, want %d: %s", status, tc.status, body)
			}
			if tc.code == "" {
				if !strings.Contains(body, "<DescribeLoadBalancersResult>") || !strings.Contains(body, "<RequestId>") {
					t.Errorf("body %s", body)
				}
				return
			}
			var e xError
			if err := xml.Unmarshal([]byte(body), &e); err != nil {
				t.Fatalf("error body %q: %v", body, err)
			}
			if e.Code != tc.code || e.RequestID == "" || e.Message == "" {
				t.Errorf("error %+v, want code %s with a message and request id", e, tc.code)
			}
		})
	}
}
