package testbed

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
)

// imageArchives returns cfg.Images, or the archives in <bin dir>/images.
func (c *Config) imageArchives() ([]string, error) {
	if len(c.Images) > 0 {
		return c.Images, nil
	}
	got, err := filepath.Glob(filepath.Join(c.BinDir, "images", "*.oci.tar"))
	if err != nil {
		return nil, fmt.Errorf("images: %w", err)
	}
	if len(got) == 0 {
		return nil, fmt.Errorf("images: none in %s (make images)", filepath.Join(c.BinDir, "images"))
	}
	return got, nil
}

// importImages imports the OCI archives into node n's containerd, in the
// k8s.io namespace the CRI plugin uses.
func importImages(ctx context.Context, cfg Config, n Node, archives []string) error {
	for _, a := range archives {
		cmd := exec.CommandContext(ctx, filepath.Join(cfg.BinDir, "ctr"), "--address", n.Runtime.ContainerdSocket,
			"-n", "k8s.io", "images", "import", a)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("import %s into %s: %w: %s", filepath.Base(a), n.Name, err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}
