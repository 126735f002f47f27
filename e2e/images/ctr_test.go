package images

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/opencontainers/go-digest"
)

// fakeCtr writes a ctr that logs its arguments, lists two images (as
// containerd 2.3.7's ctr prints them) and fails to import an archive named
// bad.tar.
func fakeCtr(t *testing.T) (ctr, log string) {
	t.Helper()
	dir := t.TempDir()
	ctr, log = filepath.Join(dir, "ctr"), filepath.Join(dir, "args")
	script := `#!/bin/sh
echo "$*" >> ` + log + `
case "$*" in
*"images ls") cat <<EOF
REF                          TYPE                                       DIGEST                                                                  SIZE     PLATFORMS   LABELS
registry.k8s.io/pause:3.10.2 application/vnd.oci.image.manifest.v1+json sha256:d7f6a5715ba299f69d2db4058132441b557b9e87290eac9d262f67250caf6b79 2.3 MiB  linux/amd64 io.cri-containerd.image=managed,io.cri-containerd.pinned=pinned
example.com/echo:1           application/vnd.oci.image.manifest.v1+json sha256:1801d71be299441abd7e3c173bb31e28f6fee91d7b551a3aa65836336338acad 11.3 MiB linux/amd64 io.cri-containerd.image=managed
EOF
;;
*bad.tar) echo "ctr: unexpected EOF" >&2; exit 1 ;;
esac
`
	if err := os.WriteFile(ctr, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return ctr, log
}

func TestContainerdImport(t *testing.T) {
	ctr, log := fakeCtr(t)
	c := Containerd{Ctr: ctr, Address: "/run/x/containerd.sock"}
	if err := c.Import(t.Context(), []string{"/a/pause.oci.tar", "/a/echo.oci.tar"}); err != nil {
		t.Fatal(err)
	}
	missing, err := c.Missing(t.Context(), map[string]digest.Digest{
		"registry.k8s.io/pause:3.10.2":                   "sha256:d7f6a5715ba299f69d2db4058132441b557b9e87290eac9d262f67250caf6b79",
		"example.com/echo:1":                             "sha256:" + digest.Digest(strings.Repeat("1", 64)), // an older image by that name
		"registry.k8s.io/e2e-test-images/agnhost:2.63.0": "sha256:" + digest.Digest(strings.Repeat("2", 64)),
	})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"example.com/echo:1", "registry.k8s.io/e2e-test-images/agnhost:2.63.0"}, missing); diff != "" {
		t.Errorf("missing (-want +got):\n%s", diff)
	}
	got, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"--address /run/x/containerd.sock --namespace k8s.io images import --all-platforms /a/pause.oci.tar",
		"--address /run/x/containerd.sock --namespace k8s.io images import --all-platforms /a/echo.oci.tar",
		"--address /run/x/containerd.sock --namespace k8s.io images ls",
	}
	if diff := cmp.Diff(want, strings.Split(strings.TrimSpace(string(got)), "\n")); diff != "" {
		t.Errorf("ctr calls (-want +got):\n%s", diff)
	}

	err = Containerd{Ctr: ctr, Address: "/s", Namespace: "other"}.Import(t.Context(), []string{"/a/bad.tar", "/a/never.tar"})
	if err == nil || !strings.Contains(err.Error(), "import /a/bad.tar") || !strings.Contains(err.Error(), "unexpected EOF") {
		t.Errorf("import of a bad archive: %v, want its name and ctr's message", err)
	}
	got, _ = os.ReadFile(log)
	if strings.Contains(string(got), "never.tar") || !strings.Contains(string(got), "--namespace other") {
		t.Errorf("after a failed import, ctr was called as:\n%s", got)
	}
}
