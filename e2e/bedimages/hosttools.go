package bedimages

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/directlb/directlb/e2e/images"
)

// HostTool is a dynamically linked program of the host that an image gets
// with the shared libraries it loads, at the same paths as on the host.
type HostTool struct {
	// Path is where the image has it; Source the host's file.
	Path, Source string
}

// AgnhostTools are the programs the upstream e2e tests run in agnhost
// containers besides agnhost itself: curl, wget, netcat with OpenBSD's
// flags (-v -t -u -w -z), dig and nslookup (with the resolver's search
// list), ip, bash, and dash as /bin/sh, whose commands are looked up in PATH
// (busybox's sh would run its own nc and nslookup applets). Upstream's
// image installs the same from Alpine; these are Debian's (curl, wget,
// netcat-openbsd, bind9-dnsutils, iproute2, bash, dash).
var AgnhostTools = []HostTool{
	{Path: "/bin/sh", Source: "/bin/dash"},
	{Path: "/bin/bash", Source: "/bin/bash"},
	{Path: "/usr/bin/curl", Source: "/usr/bin/curl"},
	{Path: "/usr/bin/nc", Source: "/bin/nc.openbsd"},
	{Path: "/usr/bin/dig", Source: "/usr/bin/dig"},
	{Path: "/usr/bin/nslookup", Source: "/usr/bin/nslookup"},
	// Debian's static busybox's wget crashes (SIGSEGV) on every URL, a
	// static glibc's resolver; GNU wget takes the tests' -q -T -O flags.
	{Path: "/usr/bin/wget", Source: "/usr/bin/wget"},
	{Path: "/bin/ip", Source: "/bin/ip"},
}

// hostToolEntries returns the tools and every shared library and the
// dynamic loader they need (ldd's list), each once.
func hostToolEntries(ctx context.Context, tools []HostTool) ([]images.Entry, error) {
	var out []images.Entry
	seen := map[string]bool{}
	for _, t := range tools {
		if _, err := os.Stat(t.Source); err != nil {
			return nil, fmt.Errorf("host tool %s: %w", t.Path, err)
		}
		out = append(out, images.File(t.Path, t.Source, 0o755))
		seen[t.Path] = true
		libs, err := sharedLibraries(ctx, t.Source)
		if err != nil {
			return nil, err
		}
		for _, l := range libs {
			if !seen[l] {
				seen[l] = true
				out = append(out, images.File(l, l, 0o755))
			}
		}
	}
	return out, nil
}

// sharedLibraries lists the absolute paths ldd resolves for program: the
// libraries ("libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)") and
// the loader ("/lib64/ld-linux-x86-64.so.2 (0x…)"); the vDSO has no file.
func sharedLibraries(ctx context.Context, program string) ([]string, error) {
	out, err := exec.CommandContext(ctx, "ldd", program).Output()
	if err != nil {
		return nil, fmt.Errorf("ldd %s: %w", program, err)
	}
	return parseLdd(out)
}

func parseLdd(out []byte) ([]string, error) {
	var libs []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if _, after, ok := strings.Cut(line, "=>"); ok {
			line = strings.TrimSpace(after)
		}
		p, _, _ := strings.Cut(line, " ")
		switch {
		case p == "":
		case strings.Contains(line, "not found"):
			return nil, fmt.Errorf("ldd: a library is missing: %s", sc.Text())
		case filepath.IsAbs(p):
			libs = append(libs, filepath.Clean(p))
		}
	}
	return libs, sc.Err()
}
