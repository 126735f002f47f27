package images

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
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

// List returns the names of the images in the namespace.
func (c Containerd) List(ctx context.Context) ([]string, error) {
	out, err := c.ctr(ctx, "images", "ls", "-q")
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	return strings.Fields(string(out)), nil
}

// Missing returns the refs that are not images in the namespace.
func (c Containerd) Missing(ctx context.Context, refs []string) ([]string, error) {
	names, err := c.List(ctx)
	if err != nil {
		return nil, err
	}
	have := map[string]bool{}
	for _, n := range names {
		have[n] = true
	}
	var missing []string
	for _, r := range refs {
		if !have[r] {
			missing = append(missing, r)
		}
	}
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
