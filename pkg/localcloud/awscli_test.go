package localcloud_test

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap"

	"github.com/directlb/directlb/pkg/localcloud"
	"github.com/directlb/directlb/pkg/localcloud/store"
)

// awsCLI finds the Debian AWS CLI (/usr/bin/aws), else any aws on PATH.
func awsCLI(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat("/usr/bin/aws"); err == nil {
		return "/usr/bin/aws"
	}
	p, err := exec.LookPath("aws")
	if err != nil {
		t.Skip("the AWS CLI (Debian package awscli) is not installed")
	}
	return p
}

func TestAWSCLI(t *testing.T) {
	cli := awsCLI(t)
	cfg := localcloud.DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.StateDir = t.TempDir()
	cfg.Datapath = false
	cfg.AccessKeyID, cfg.SecretAccessKey = "AKIDCLI", "cli-secret"
	srv, err := localcloud.New(cfg, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	home := t.TempDir()

	aws := func(secret string, args ...string) (map[string]any, string, error) {
		cmd := exec.Command(cli, append([]string{"elbv2", "--endpoint-url", "http://" + srv.Addr(), "--output", "json"}, args...)...)
		cmd.Env = []string{
			"PATH=" + os.Getenv("PATH"), "HOME=" + home,
			"AWS_ACCESS_KEY_ID=AKIDCLI", "AWS_SECRET_ACCESS_KEY=" + secret, "AWS_DEFAULT_REGION=us-east-1",
			"AWS_CONFIG_FILE=" + filepath.Join(home, "config"), "AWS_SHARED_CREDENTIALS_FILE=" + filepath.Join(home, "credentials"),
			"AWS_EC2_METADATA_DISABLED=true", "AWS_PAGER=",
		}
		out, err := cmd.CombinedOutput()
		if err != nil {
			return nil, string(out), err
		}
		var v map[string]any
		if len(strings.TrimSpace(string(out))) > 0 {
			if err := json.Unmarshal(out, &v); err != nil {
				t.Fatalf("aws %s: output is not JSON: %v: %s", strings.Join(args, " "), err, out)
			}
		}
		return v, string(out), nil
	}
	must := func(t *testing.T, args ...string) map[string]any {
		t.Helper()
		v, out, err := aws("cli-secret", args...)
		if err != nil {
			t.Fatalf("aws elbv2 %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return v
	}
	first := func(t *testing.T, v map[string]any, list, field string) string {
		t.Helper()
		items, _ := v[list].([]any)
		if len(items) == 0 {
			t.Fatalf("no %s in %v", list, v)
		}
		s, _ := items[0].(map[string]any)[field].(string)
		return s
	}

	lbARN := first(t, must(t, "create-load-balancer", "--name", "cli", "--type", "network", "--tags", "Key=directlb.io/cluster,Value=cli"), "LoadBalancers", "LoadBalancerArn")
	// The rest of the setup through the store: each CLI run costs seconds.
	st := srv.Store()
	hc := store.DefaultHealthCheck()
	tg, err := st.CreateTargetGroup("cli-tg", "TCP", 8080, "vpc-1", hc, nil)
	if err != nil {
		t.Fatal(err)
	}
	tgARN := tg.ARN
	if _, err := st.CreateListener(lbARN, "TCP", 80, tgARN, nil); err != nil {
		t.Fatal(err)
	}
	if err := st.RegisterTargets(tgARN, []store.Target{{IP: "10.100.1.70", Port: 8080}, {IP: "10.100.2.70", Port: 8080}}); err != nil {
		t.Fatal(err)
	}

	// The CLI runs are independent: run them side by side.
	t.Run("describe-load-balancers", func(t *testing.T) {
		t.Parallel()
		lbs := must(t, "describe-load-balancers")
		if name := first(t, lbs, "LoadBalancers", "LoadBalancerName"); name != "cli" {
			t.Errorf("describe-load-balancers: name %q, want cli", name)
		}
	})
	t.Run("describe-target-health", func(t *testing.T) {
		t.Parallel()
		th := must(t, "describe-target-health", "--target-group-arn", tgARN)
		descs, _ := th["TargetHealthDescriptions"].([]any)
		if len(descs) != 2 {
			t.Fatalf("describe-target-health: %d targets, want 2: %v", len(descs), th)
		}
		for _, d := range descs {
			dm := d.(map[string]any)
			state := dm["TargetHealth"].(map[string]any)["State"]
			if state != "healthy" {
				t.Errorf("describe-target-health: %v state %v, want healthy (API-only)", dm["Target"], state)
			}
		}
	})
	// Errors come back in the shape the CLI understands.
	t.Run("not-found", func(t *testing.T) {
		t.Parallel()
		if _, out, err := aws("cli-secret", "describe-target-health", "--target-group-arn", tgARN+"x"); err == nil || !strings.Contains(out, "TargetGroupNotFound") {
			t.Errorf("describe-target-health of an unknown group: %v %s; want TargetGroupNotFound", err, out)
		}
	})
	t.Run("wrong-secret", func(t *testing.T) {
		t.Parallel()
		if _, out, err := aws("wrong", "describe-load-balancers"); err == nil || !strings.Contains(out, "SignatureDoesNotMatch") {
			t.Errorf("wrong secret: %v %s; want SignatureDoesNotMatch", err, out)
		}
	})
}
