package install_test

import (
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/google/go-cmp/cmp"
	"github.com/spf13/pflag"

	"github.com/directlb/directlb/pkg/cni"
	"github.com/directlb/directlb/pkg/cni/install"
)

// conflist is a conflist file as the runtime reads it: the list's name
// and version, and each plugin's entry (type and raw bytes).
type conflist struct {
	Name       string
	CNIVersion string
	Plugins    []struct {
		Type  string
		Bytes []byte
	}
}

func readConflist(path string) (*conflist, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var raw struct {
		Name       string            `json:"name"`
		CNIVersion string            `json:"cniVersion"`
		Plugins    []json.RawMessage `json:"plugins"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, err
	}
	out := &conflist{Name: raw.Name, CNIVersion: raw.CNIVersion}
	for _, p := range raw.Plugins {
		var pc types.PluginConf
		if err := json.Unmarshal(p, &pc); err != nil {
			return nil, err
		}
		// The runtime injects the list's name and version into each entry.
		var m map[string]any
		_ = json.Unmarshal(p, &m)
		m["name"], m["cniVersion"] = raw.Name, raw.CNIVersion
		entry, _ := json.Marshal(m)
		out.Plugins = append(out.Plugins, struct {
			Type  string
			Bytes []byte
		}{pc.Type, entry})
	}
	return out, nil
}

// parse is the install step's flags as main binds them.
func parse(t *testing.T, args ...string) install.Config {
	t.Helper()
	c := install.DefaultConfig()
	fs := pflag.NewFlagSet("install", pflag.ContinueOnError)
	c.BindFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return c
}

// host is a node's CNI directories and a plugin binary to copy.
func host(t *testing.T) (dir string, args []string) {
	t.Helper()
	dir = t.TempDir()
	src := filepath.Join(dir, "image", "directlb-cni")
	if err := os.MkdirAll(filepath.Dir(src), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(src, []byte("#!plugin"), 0o755); err != nil {
		t.Fatal(err)
	}
	// The directories are made as needed (a per-node conf directory).
	return dir, []string{"--source=" + src, "--bin-dir=" + filepath.Join(dir, "bin"), "--conf-dir=" + filepath.Join(dir, "net.d")}
}

func TestRun(t *testing.T) {
	dir, args := host(t)
	creds := filepath.Join(dir, "etc", "directlb", "cni-credentials")
	c := parse(t, append(args, "--instance-id=node-1", "--aws-endpoint=http://10.100.0.3:4566", "--warm-ip-target=0",
		"--first-eni=1", "--data-dir=/var/lib/directlb-cni", "--credentials-file="+creds)...)
	env := map[string]string{"AWS_ACCESS_KEY_ID": "AKIDLOCALCLOUD", "AWS_SECRET_ACCESS_KEY": "localcloud-secret"}
	if err := install.Run(t.Context(), c, func(k string) string { return env[k] }); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "bin", "directlb-cni")
	if st, err := os.Stat(bin); err != nil || st.Mode().Perm() != 0o755 {
		t.Errorf("plugin binary: %v, %v", st, err)
	}
	if b, _ := os.ReadFile(creds); string(b) != "[default]\naws_access_key_id = AKIDLOCALCLOUD\naws_secret_access_key = localcloud-secret\n" {
		t.Errorf("credentials file:\n%s", b)
	}
	if st, err := os.Stat(creds); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("credentials file mode: %v, %v", st, err)
	}
	conf := filepath.Join(dir, "net.d", "10-directlb.conflist")
	list, err := readConflist(conf) // as the runtime reads it
	if err != nil {
		t.Fatal(err)
	}
	if list.Name != "directlb" || list.CNIVersion != "1.1.0" || len(list.Plugins) != 1 || list.Plugins[0].Type != "directlb-cni" {
		t.Fatalf("conflist: %+v", list)
	}
	pc, err := cni.LoadConfig(list.Plugins[0].Bytes) // as the plugin reads it
	if err != nil {
		t.Fatal(err)
	}
	warm := 0
	want := cni.Settings{
		InstanceID: "node-1",
		AWS:        cni.AWS{Endpoint: "http://10.100.0.3:4566", Region: "us-east-1", SharedCredentialsFile: creds, MaxAttempts: 3},
		DataDir:    "/var/lib/directlb-cni", WarmIPTarget: &warm, FirstENI: 1,
		LogFile: cni.DefaultLogFile, LogLevel: "info", CloudTimeout: cni.Duration{Duration: 10 * time.Second},
	}
	if diff := cmp.Diff(want, pc.Settings); diff != "" {
		t.Errorf("plugin settings from the conflist (-want +got):\n%s", diff)
	}

	// Again with the same flags: nothing is rewritten (the runtime watches
	// the directory).
	before, _ := os.Stat(conf)
	time.Sleep(10 * time.Millisecond)
	if err := install.Run(t.Context(), c, func(k string) string { return env[k] }); err != nil {
		t.Fatal(err)
	}
	if after, _ := os.Stat(conf); !after.ModTime().Equal(before.ModTime()) {
		t.Error("the unchanged conflist was rewritten")
	}
	ents, _ := os.ReadDir(filepath.Join(dir, "net.d"))
	if len(ents) != 1 {
		t.Errorf("conf dir holds %d files, want the conflist only (no temporary files)", len(ents))
	}
}

// TestChainPortmap: --chain-portmap appends portmap with the portMappings
// capability, and refuses a bin dir without it.
func TestChainPortmap(t *testing.T) {
	dir, args := host(t)
	c := parse(t, append(args, "--instance-id=node-1", "--chain-portmap")...)
	if err := install.Run(t.Context(), c, os.Getenv); err == nil || !strings.Contains(err.Error(), "the portmap plugin must be in --bin-dir") {
		t.Errorf("--chain-portmap without portmap: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bin", "portmap"), []byte("#!portmap"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := install.Run(t.Context(), c, os.Getenv); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "net.d", c.ConfName))
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		Plugins []struct {
			Type         string          `json:"type"`
			Capabilities map[string]bool `json:"capabilities"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal(b, &list); err != nil {
		t.Fatal(err)
	}
	if len(list.Plugins) != 2 || list.Plugins[0].Type != "directlb-cni" || list.Plugins[1].Type != "portmap" || !list.Plugins[1].Capabilities["portMappings"] {
		t.Errorf("conflist plugins: %+v", list.Plugins)
	}
}

func TestRunWithoutCredentials(t *testing.T) {
	_, args := host(t)
	c := parse(t, append(args, "--instance-id=i-0abc", "--credentials-file=/etc/directlb/cni-credentials")...)
	err := install.Run(t.Context(), c, func(string) string { return "" })
	if err == nil || !strings.Contains(err.Error(), "needs $AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY") {
		t.Errorf("Run with --credentials-file and no key: %v", err)
	}
}

// TestRunNodeName reads the instance ID from the Node's providerID and
// firstENI from its label, with the ServiceAccount's token and CA.
func TestRunNodeName(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer sa-token" {
			http.Error(w, "Unauthorized", http.StatusUnauthorized)
			return
		}
		switch r.URL.Path {
		case "/api/v1/nodes/node-2":
			_, _ = w.Write([]byte(`{"metadata":{"name":"node-2","labels":{"directlb.io/first-eni":"1"}},"spec":{"providerID":"aws:///us-east-1a/i-0abc"}}`))
		case "/api/v1/nodes/bare":
			_, _ = w.Write([]byte(`{"metadata":{"name":"bare"},"spec":{}}`))
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	u, _ := url.Parse(srv.URL)
	port, _ := strconv.Atoi(u.Port())
	sa := t.TempDir()
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if err := os.WriteFile(filepath.Join(sa, "ca.crt"), ca, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(sa, "token"), []byte("sa-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	run := func(node string) (cni.Settings, error) {
		dir, args := host(t)
		c := parse(t, append(args, "--node-name="+node, "--first-eni-label=directlb.io/first-eni",
			"--k8s-service-host="+u.Hostname(), "--k8s-service-port="+strconv.Itoa(port))...)
		c.APIServer.TokenFile, c.APIServer.CAFile = filepath.Join(sa, "token"), filepath.Join(sa, "ca.crt")
		if err := install.Run(t.Context(), c, os.Getenv); err != nil {
			return cni.Settings{}, err
		}
		list, err := readConflist(filepath.Join(dir, "net.d", c.ConfName))
		if err != nil {
			return cni.Settings{}, err
		}
		var s cni.Settings
		return s, json.Unmarshal(list.Plugins[0].Bytes, &s)
	}
	s, err := run("node-2")
	if err != nil {
		t.Fatal(err)
	}
	if s.InstanceID != "i-0abc" || s.FirstENI != 1 {
		t.Errorf("from the Node: instanceID %q firstENI %d; want i-0abc and 1", s.InstanceID, s.FirstENI)
	}
	if _, err := run("bare"); err == nil || !strings.Contains(err.Error(), "no spec.providerID") {
		t.Errorf("a Node without providerID: %v", err)
	}
	if _, err := run("gone"); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("a missing Node: %v", err)
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{name: "neither instance nor node", want: []string{"--instance-id \"\", --node-name \"\": set exactly one"}},
		{name: "both", args: []string{"--instance-id=i", "--node-name=n"}, want: []string{"set exactly one"}},
		{
			name: "every flag wrong",
			args: []string{"--instance-id=i", "--bin-dir=bin", "--conf-dir=net.d", "--conf-name=10-directlb.conf", "--network-name=",
				"--cni-version=0.3.1", "--first-eni-label=x", "--credentials-file=creds", "--k8s-service-port=443",
				"--warm-ip-target=-1", "--aws-region=", "--log-level=loud", "--cloud-timeout=0s"},
			want: []string{`--bin-dir "bin"`, `--conf-dir "net.d"`, `--conf-name "10-directlb.conf"`, "--network-name", `--cni-version "0.3.1"`,
				"--first-eni-label: needs --node-name", `--credentials-file "creds"`, "--k8s-service-port: needs --k8s-service-host",
				"warmIPTarget -1", "aws.region", `logLevel "loud"`, "cloudTimeout 0s"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := parse(t, tc.args...)
			err := c.Validate()
			if err == nil {
				t.Fatal("valid")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
		})
	}
	if c := parse(t, "--instance-id=node-1"); c.Validate() != nil {
		t.Errorf("defaults with --instance-id: %v", c.Validate())
	}
}
