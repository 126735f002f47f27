package bedimages

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/directlb/directlb/e2e/images"
)

// summary is what a test compares of an image.
type summary struct {
	Ref        string
	Entrypoint []string
	Cmd        []string
	User       string
	Files      map[string]string // path: source, or "->target" for a symlink
}

func summarize(named []Named) map[string]summary {
	out := map[string]summary{}
	for _, n := range named {
		s := summary{Ref: n.Image.Ref, Entrypoint: n.Image.Config.Entrypoint, Cmd: n.Image.Config.Cmd, User: n.Image.Config.User, Files: map[string]string{}}
		for _, e := range n.Image.Entries {
			switch {
			case e.Type == images.TypeSymlink && e.Path != "/agnhost-2":
				continue // the applets, below
			case e.Type == images.TypeSymlink:
				s.Files[e.Path] = "->" + e.Target
			case e.Type == images.TypeFile && e.Source != "":
				s.Files[e.Path] = e.Source
			}
		}
		out[n.Name] = s
	}
	return out
}

func TestImages(t *testing.T) {
	in := Inputs{
		BinDir: "/b", AppVersion: "0.3.0", Busybox: "/bin/busybox", Applets: []string{"[", "busybox", "sh", "sleep"},
		Agnhost: "registry.k8s.io/e2e-test-images/agnhost:2.63.0",
		BusyBox: "registry.k8s.io/e2e-test-images/busybox:1.37.0-1",
		Pause:   "registry.k8s.io/pause:3.10.2",
	}
	shell := func(more map[string]string) map[string]string {
		m := map[string]string{"/bin/busybox": "/bin/busybox"}
		for k, v := range more {
			m[k] = v
		}
		return m
	}
	want := map[string]summary{
		"lb-controller": {Ref: "ghcr.io/directlb/lb-controller:0.3.0", Entrypoint: []string{"/usr/local/bin/lb-controller"}, User: "65532:65532",
			Files: map[string]string{"/usr/local/bin/lb-controller": "/b/lb-controller"}},
		"node-agent": {Ref: "ghcr.io/directlb/node-agent:0.3.0", Entrypoint: []string{"/usr/local/bin/node-agent"},
			Files: map[string]string{"/usr/local/bin/node-agent": "/b/node-agent"}},
		"localcloud": {Ref: "ghcr.io/directlb/localcloud:0.3.0", Entrypoint: []string{"/usr/local/bin/localcloud"},
			Files: map[string]string{"/usr/local/bin/localcloud": "/b/localcloud"}},
		"agnhost": {Ref: in.Agnhost, Entrypoint: []string{"/agnhost"}, Cmd: []string{"pause"},
			Files: shell(map[string]string{"/agnhost": "/b/agnhost", "/agnhost-2": "->agnhost"})},
		"busybox": {Ref: in.BusyBox, Cmd: []string{"sh"}, Files: shell(nil)},
		"pause":   {Ref: in.Pause, Entrypoint: []string{"/pause"}, User: "65535:65535", Files: map[string]string{"/pause": "/b/pause"}},
		"echo":    {Ref: "example.com/echo:1", Entrypoint: []string{"/dlb-echo"}, Files: shell(map[string]string{"/dlb-echo": "/b/dlb-echo"})},
	}
	if diff := cmp.Diff(want, summarize(Images(in))); diff != "" {
		t.Errorf("images (-want +got):\n%s", diff)
	}

	in.CNI = true
	agent := summarize(Images(in))["node-agent"]
	if got := agent.Files["/usr/local/bin/directlb-cni"]; got != "/b/directlb-cni" {
		t.Errorf("with bin/directlb-cni, node-agent image has it from %q", got)
	}

	for _, n := range Images(in) {
		if _, err := images.Prepare(images.Image{Ref: n.Image.Ref, Entries: withoutSources(n.Image.Entries)}); err != nil {
			t.Errorf("image %s: %v", n.Name, err)
		}
		var applets []string
		for _, e := range n.Image.Entries {
			if e.Type == images.TypeSymlink && e.Target == "busybox" {
				applets = append(applets, e.Path)
			}
		}
		if _, shell := want[n.Name].Files["/bin/busybox"]; shell {
			if diff := cmp.Diff([]string{"/bin/[", "/bin/sh", "/bin/sleep"}, applets); diff != "" {
				t.Errorf("image %s applets (-want +got):\n%s", n.Name, diff)
			}
		}
	}

	for _, n := range Images(in) {
		if n.Name != "echo" {
			continue
		}
		if diff := cmp.Diff([]string{defaultPath, "ECHO_TCP_PORTS=8080", "ECHO_UDP_PORTS=9090"}, n.Image.Config.Env); diff != "" {
			t.Errorf("echo image env (-want +got):\n%s", diff)
		}
	}
}

// withoutSources replaces host files by empty content, to check the entries
// make a valid layer without the files.
func withoutSources(entries []images.Entry) []images.Entry {
	out := make([]images.Entry, len(entries))
	for i, e := range entries {
		if e.Source != "" {
			e.Source, e.Data = "", []byte{}
		}
		out[i] = e
	}
	return out
}
