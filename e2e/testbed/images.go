package testbed

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/directlb/directlb/e2e/images"
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
	c := images.Containerd{Ctr: filepath.Join(cfg.BinDir, "ctr"), Address: n.Runtime.ContainerdSocket}
	if err := c.Import(ctx, archives); err != nil {
		return fmt.Errorf("node %s: %w", n.Name, err)
	}
	return nil
}
