package images

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"sort"
	"strings"

	"github.com/opencontainers/go-digest"
)

// Containerd is a containerd that images are imported into, through its
// ctr client.
type Containerd struct {
	// Ctr is the ctr binary.
	Ctr string
	// Address is containerd's gRPC socket.
	Address string
	// Namespace defaults to "k8s.io", the one the kubelet's CRI uses.
	Namespace string
}

// Import imports each archive with `ctr images import --all-platforms`; the
// images are named by their index's io.containerd.image.name annotation.
// Importing an image again replaces its name's target, so Import is
// idempotent.
func (c Containerd) Import(ctx context.Context, archives []string) error {
	for _, a := range archives {
		if _, err := c.ctr(ctx, "images", "import", "--all-platforms", a); err != nil {
			return fmt.Errorf("import %s: %w", a, err)
		}
	}
	return nil
}

// List returns the images in the namespace: name and manifest digest
// (the REF and DIGEST columns of `ctr images ls`).
func (c Containerd) List(ctx context.Context) (map[string]digest.Digest, error) {
	out, err := c.ctr(ctx, "images", "ls")
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if !strings.HasPrefix(lines[0], "REF") {
		return nil, fmt.Errorf("list images: unexpected output %q", lines[0])
	}
	images := map[string]digest.Digest{}
	for _, line := range lines[1:] {
		f := strings.Fields(line)
		if len(f) < 3 {
			return nil, fmt.Errorf("list images: unexpected line %q", line)
		}
		d, err := digest.Parse(f[2])
		if err != nil {
			return nil, fmt.Errorf("list images: line %q: %w", line, err)
		}
		images[f[0]] = d
	}
	return images, nil
}

// Missing returns the references of want that containerd does not have
// with the manifest digest want gives them, sorted: absent, or another
// (older) image under the same name.
func (c Containerd) Missing(ctx context.Context, want map[string]digest.Digest) ([]string, error) {
	have, err := c.List(ctx)
	if err != nil {
		return nil, err
	}
	var missing []string
	for ref, d := range want {
		if have[ref] != d {
			missing = append(missing, ref)
		}
	}
	sort.Strings(missing)
	return missing, nil
}

func (c Containerd) ctr(ctx context.Context, args ...string) ([]byte, error) {
	if c.Ctr == "" || c.Address == "" {
		return nil, errors.New("containerd: ctr binary and address are required")
	}
	ns := c.Namespace
	if ns == "" {
		ns = "k8s.io"
	}
	argv := append([]string{"--address", c.Address, "--namespace", ns}, args...)
	cmd := exec.CommandContext(ctx, c.Ctr, argv...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w: %s", c.Ctr, strings.Join(argv, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}
