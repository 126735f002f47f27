package testbed

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/directlb/directlb/internal/namedns"
)

// createNetNS makes the named network namespace (unless it exists) and
// brings its loopback up.
func createNetNS(name string) error {
	if err := namedns.Ensure(name); err != nil {
		return err
	}
	h, err := namedns.Handle(name)
	if err != nil {
		return err
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("netns %s: loopback: %w", name, err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("netns %s: loopback up: %w", name, err)
	}
	return nil
}

// setSysctls writes net sysctls (paths under /proc/sys) inside a namespace.
func setSysctls(nsName string, kv map[string]string) error {
	return namedns.Do(nsName, func() error {
		for k, v := range kv {
			p := filepath.Join("/proc/sys", strings.ReplaceAll(k, ".", "/"))
			if err := os.WriteFile(p, []byte(v), 0o644); err != nil {
				return fmt.Errorf("netns %s: sysctl %s=%s: %w", nsName, k, v, err)
			}
		}
		return nil
	})
}
