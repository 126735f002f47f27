package bedimages

import (
	"context"
	"slices"
	"testing"
)

func TestParseLdd(t *testing.T) {
	out := "\tlinux-vdso.so.1 (0x00007ffd5b3f2000)\n" +
		"\tlibbsd.so.0 => /lib/x86_64-linux-gnu/libbsd.so.0 (0x00007f2c0f9e1000)\n" +
		"\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2c0f7ff000)\n" +
		"\t/lib64/ld-linux-x86-64.so.2 (0x00007f2c0fa5e000)\n"
	got, err := parseLdd([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"/lib/x86_64-linux-gnu/libbsd.so.0", "/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"}
	if !slices.Equal(got, want) {
		t.Errorf("parseLdd = %v, want %v", got, want)
	}
	if _, err := parseLdd([]byte("\tlibfoo.so.1 => not found\n")); err == nil {
		t.Error("parseLdd with a missing library: no error")
	}
}

// TestHostToolEntries runs ldd on the host's own sh: the program and at
// least libc and the loader, each listed once.
func TestHostToolEntries(t *testing.T) {
	tools := []HostTool{{Path: "/usr/bin/x", Source: "/bin/sh"}, {Path: "/usr/bin/y", Source: "/bin/sh"}}
	entries, err := hostToolEntries(context.Background(), tools)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, e := range entries {
		seen[e.Path]++
	}
	for p, n := range seen {
		if n != 1 {
			t.Errorf("%s listed %d times", p, n)
		}
	}
	if seen["/usr/bin/x"] != 1 || seen["/usr/bin/y"] != 1 || len(seen) < 4 {
		t.Errorf("entries %v: want both tools plus libc and the loader", seen)
	}
	if _, err := hostToolEntries(context.Background(), []HostTool{{Path: "/x", Source: "/nonexistent"}}); err == nil {
		t.Error("a missing host tool: no error")
	}
}
