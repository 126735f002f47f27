package bedimages

import (
	"debug/elf"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/directlb/directlb/e2e/images"
)

// testConfig is a bin dir of scripts standing in for the binaries, a
// busybox that lists three applets, a chart and the cut-down manifest.
func testConfig(t *testing.T) Config {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	if err := os.Mkdir(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, b := range binaries {
		writeScript(t, filepath.Join(bin, b), "echo "+b)
	}
	busybox := filepath.Join(dir, "busybox")
	writeScript(t, busybox, `[ "$1" = --list ] && printf 'busybox\nsh\nsleep\n'`)
	chart := filepath.Join(dir, "Chart.yaml")
	if err := os.WriteFile(chart, []byte("name: directlb\nversion: 0.1.0\nappVersion: \"0.2.0\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return Config{BinDir: bin, OutDir: filepath.Join(dir, "out"), Chart: chart, E2EManifest: "testdata/manifest.go", Busybox: busybox}
}

func writeScript(t *testing.T, name, body string) {
	t.Helper()
	if err := os.WriteFile(name, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
}

// built returns the names of the images that were written.
func built(results []Result) []string {
	var out []string
	for _, r := range results {
		if r.Built {
			out = append(out, r.Name)
		}
	}
	return out
}

func TestBuildSkipsUnchanged(t *testing.T) {
	cfg := testConfig(t)
	all := []string{"lb-controller", "node-agent", "localcloud", "agnhost", "busybox", "pause", "echo"}
	first, err := Build(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(all, built(first)); diff != "" {
		t.Errorf("first build wrote (-want +got):\n%s", diff)
	}

	listed, err := ReadList(filepath.Join(cfg.OutDir, ListFile))
	if err != nil {
		t.Fatal(err)
	}
	var want []Listed
	for _, r := range first {
		want = append(want, Listed{Ref: r.Ref, Archive: r.Archive, Manifest: r.Manifest})
		c, err := images.VerifyFile(r.Archive)
		if err != nil {
			t.Errorf("archive of %s: %v", r.Name, err)
			continue
		}
		if got := c.Refs(); len(got) != 1 || got[0] != r.Ref {
			t.Errorf("archive of %s names %v, want %s", r.Name, got, r.Ref)
		}
	}
	if diff := cmp.Diff(want, listed); diff != "" {
		t.Errorf("%s (-want +got):\n%s", ListFile, diff)
	}
	if want := "ghcr.io/directlb/node-agent:0.2.0"; first[1].Ref != want {
		t.Errorf("node-agent image %s, want %s (the chart's appVersion)", first[1].Ref, want)
	}

	steps := []struct {
		name   string
		change func(t *testing.T)
		want   []string
	}{
		{"nothing changed", func(*testing.T) {}, nil},
		{"a binary changed", func(t *testing.T) { writeScript(t, filepath.Join(cfg.BinDir, "pause"), "echo new") }, []string{"pause"}},
		{"an archive damaged", func(t *testing.T) {
			if err := os.Truncate(first[6].Archive, first[6].Size/2); err != nil {
				t.Fatal(err)
			}
		}, []string{"echo"}},
		{"an archive removed", func(t *testing.T) {
			if err := os.Remove(first[0].Archive); err != nil {
				t.Fatal(err)
			}
		}, []string{"lb-controller"}},
		{"the CNI binary appeared", func(t *testing.T) { writeScript(t, filepath.Join(cfg.BinDir, cniBinary), "echo cni") }, []string{"node-agent"}},
		{"the busybox changed", func(t *testing.T) {
			writeScript(t, cfg.Busybox, `[ "$1" = --list ] && printf 'busybox\nsh\nsleep\nls\n'`)
		}, []string{"agnhost", "busybox", "echo"}},
	}
	for _, s := range steps {
		s.change(t)
		results, err := Build(t.Context(), cfg)
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if diff := cmp.Diff(s.want, built(results)); diff != "" {
			t.Errorf("%s: built (-want +got):\n%s", s.name, diff)
		}
	}
}

func TestBuildInputErrors(t *testing.T) {
	cfg := testConfig(t)
	if err := os.Remove(filepath.Join(cfg.BinDir, "agnhost")); err != nil {
		t.Fatal(err)
	}
	writeScript(t, cfg.Busybox, "exit 0") // lists no sh
	_, err := Build(t.Context(), cfg)
	for _, want := range []string{"agnhost: no such file", "no sh applet"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Build: %v, want an error with %q", err, want)
		}
	}
}

func TestCheckStatic(t *testing.T) {
	const sh = "/bin/sh"
	f, err := elf.Open(sh)
	if err != nil {
		t.Skipf("%s is not ELF here: %v", sh, err)
	}
	dynamic := false
	for _, p := range f.Progs {
		dynamic = dynamic || p.Type == elf.PT_INTERP
	}
	_ = f.Close()
	if !dynamic {
		t.Skipf("%s is static here", sh)
	}
	if err := checkStatic(sh); err == nil || !strings.Contains(err.Error(), "CGO_ENABLED=0") {
		t.Errorf("checkStatic(%s): %v, want an error about dynamic linking", sh, err)
	}
}
