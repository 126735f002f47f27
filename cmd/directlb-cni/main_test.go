package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestMain lets the tests run this binary's main: with DLB_CNI_MAIN set,
// the test binary is directlb-cni.
func TestMain(m *testing.M) {
	if os.Getenv("DLB_CNI_MAIN") == "1" {
		os.Args = append([]string{"directlb-cni"}, os.Args[1:]...)
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// run runs main with args and env, stdin as given.
func run(t *testing.T, stdin string, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append([]string{"DLB_CNI_MAIN=1", "PATH=" + os.Getenv("PATH")}, env...)
	cmd.Stdin = strings.NewReader(stdin)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	var ee *exec.ExitError
	if err := cmd.Run(); errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return o.String(), e.String(), code
}

func TestVersion(t *testing.T) {
	out, _, code := run(t, "", []string{"CNI_COMMAND=VERSION"})
	var v struct {
		CNIVersion        string   `json:"cniVersion"`
		SupportedVersions []string `json:"supportedVersions"`
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil || code != 0 {
		t.Fatalf("VERSION: %q exit %d: %v", out, code, err)
	}
	for _, want := range []string{"0.4.0", "1.0.0", "1.1.0"} {
		if !slices.Contains(v.SupportedVersions, want) {
			t.Errorf("VERSION lacks %s: %v", want, v.SupportedVersions)
		}
	}
}

func TestAbout(t *testing.T) {
	out, errOut, code := run(t, "", nil)
	if code != 0 || out != "" || !strings.Contains(errOut, "directlb-cni") {
		t.Errorf("no CNI_COMMAND: stdout %q stderr %q exit %d; want the about text on stderr", out, errOut, code)
	}
}

// TestInvalidConfig: a bad configuration is a CNI error on stdout (code
// 7, naming the bad key) and exit 1; nothing else is on stdout.
func TestInvalidConfig(t *testing.T) {
	env := []string{"CNI_COMMAND=ADD", "CNI_CONTAINERID=c1", "CNI_NETNS=/run/netns/none", "CNI_IFNAME=eth0", "CNI_PATH=/opt/cni/bin"}
	out, _, code := run(t, `{"cniVersion":"1.1.0","name":"directlb","type":"directlb-cni","aws":{"region":"us-east-1"}}`, env)
	var e struct {
		Code    int    `json:"code"`
		Details string `json:"details"`
	}
	if err := json.Unmarshal([]byte(out), &e); err != nil || code != 1 || e.Code != 7 || !strings.Contains(e.Details, "instanceID") {
		t.Errorf("ADD with no instanceID: %q exit %d (%v); want code 7 naming instanceID", out, code, err)
	}
}

func TestInstallFlags(t *testing.T) {
	if _, errOut, code := run(t, "", nil, "install", "--help"); code != 0 || !strings.Contains(errOut, "--bin-dir") {
		t.Errorf("install --help: exit %d\n%s", code, errOut)
	}
	if _, errOut, code := run(t, "", nil, "install", "--warm-ip-target=-1"); code != 1 || !strings.Contains(errOut, "--instance-id") || !strings.Contains(errOut, "warmIPTarget -1") {
		t.Errorf("install with bad flags: exit %d\n%s", code, errOut)
	}
}
