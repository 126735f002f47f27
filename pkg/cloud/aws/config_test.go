package aws

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spf13/pflag"
)

func TestConfigFlags(t *testing.T) {
	for _, tc := range []struct {
		name    string
		args    []string
		check   func(Config) string
		wantErr bool
	}{
		{name: "defaults need a region", args: nil, wantErr: true},
		{name: "localcloud", args: []string{"--aws-region=us-east-1", "--aws-endpoint=http://10.100.0.3:4566", "--aws-max-attempts=5", "--aws-max-backoff=2s", "--aws-page-size=50"},
			check: func(c Config) string {
				return cmp.Diff([]any{"us-east-1", "http://10.100.0.3:4566", 5, 2 * time.Second, int32(50)},
					[]any{c.Region, c.Endpoint, c.MaxAttempts, c.MaxBackoff, c.PageSize})
			}},
		{name: "rate limits override one operation, keep the rest", args: []string{"--aws-region=r", "--aws-rate-limits=RegisterTargets=10:50,DescribeTags=0:0"},
			check: func(c Config) string {
				want := DefaultRateLimits()
				want["RegisterTargets"] = Limit{Rate: 10, Burst: 50}
				want["DescribeTags"] = Limit{}
				return cmp.Diff(want, c.RateLimits)
			}},
		{name: "bad rate limit", args: []string{"--aws-region=r", "--aws-rate-limits=RegisterTargets=10"}, wantErr: true},
		{name: "page size over 400", args: []string{"--aws-region=r", "--aws-page-size=401"}, wantErr: true},
		{name: "endpoint without scheme", args: []string{"--aws-region=r", "--aws-endpoint=10.100.0.3:4566"}, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
			c.BindFlags(fs)
			err := fs.Parse(tc.args)
			if err == nil {
				err = c.Validate()
			}
			if (err != nil) != tc.wantErr {
				t.Fatalf("err %v, want error %v", err, tc.wantErr)
			}
			if tc.check != nil {
				if diff := tc.check(c); diff != "" {
					t.Errorf("(-want +got):\n%s", diff)
				}
			}
		})
	}
}
