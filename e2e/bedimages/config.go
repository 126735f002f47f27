package bedimages

import (
	"errors"

	"github.com/spf13/pflag"
	"go.uber.org/zap"
)

// Config says where the images' inputs are and where their archives go.
type Config struct {
	// BinDir holds the binaries the images pack (`make build tools`).
	BinDir string
	// OutDir gets <name>.oci.tar per image and images.txt.
	OutDir string
	// Chart is the chart's Chart.yaml; its appVersion tags the project's
	// images.
	Chart string
	// E2EManifest is k8s.io/kubernetes/test/utils/image/manifest.go, whose
	// references the agnhost, busybox and pause images get; empty means
	// that of the k8s.io/kubernetes version ToolsModule pins.
	E2EManifest string
	ToolsModule string
	// Go is the go command that locates the k8s.io/kubernetes module.
	Go string
	// Busybox is a static busybox (Debian's busybox-static).
	Busybox string
	// AgnhostTools are host programs the agnhost image gets with their
	// shared libraries (curl, nc, dig for the upstream e2e tests).
	AgnhostTools []HostTool

	Log *zap.Logger
}

// DefaultConfig returns the defaults, relative to the repository's root.
func DefaultConfig() Config {
	return Config{
		BinDir:       "bin",
		OutDir:       "bin/images",
		Chart:        "charts/directlb/Chart.yaml",
		ToolsModule:  "hack/tools",
		Go:           "go",
		Busybox:      "/bin/busybox",
		AgnhostTools: AgnhostTools,
	}
}

// BindFlags binds the configuration to flags.
func (c *Config) BindFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.BinDir, "bin-dir", c.BinDir, "directory of the binaries the images pack")
	fs.StringVar(&c.OutDir, "out", c.OutDir, "directory for the archives (<name>.oci.tar) and images.txt")
	fs.StringVar(&c.Chart, "chart", c.Chart, "Chart.yaml whose appVersion tags directlb's images")
	fs.StringVar(&c.E2EManifest, "e2e-manifest", c.E2EManifest, "k8s.io/kubernetes/"+ManifestPath+" with the agnhost, busybox and pause tags (default: that of the k8s.io/kubernetes --tools-module pins)")
	fs.StringVar(&c.ToolsModule, "tools-module", c.ToolsModule, "Go module that pins k8s.io/kubernetes")
	fs.StringVar(&c.Go, "go", c.Go, "go command")
	fs.StringVar(&c.Busybox, "busybox", c.Busybox, "static busybox for the images with a shell")
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	var errs []error
	if c.BinDir == "" {
		errs = append(errs, errors.New("--bin-dir is required"))
	}
	if c.OutDir == "" {
		errs = append(errs, errors.New("--out is required"))
	}
	if c.Chart == "" {
		errs = append(errs, errors.New("--chart is required"))
	}
	if c.E2EManifest == "" && c.ToolsModule == "" {
		errs = append(errs, errors.New("--e2e-manifest or --tools-module is required"))
	}
	if c.E2EManifest == "" && c.Go == "" {
		errs = append(errs, errors.New("--go is required to locate the e2e manifest"))
	}
	if c.Busybox == "" {
		errs = append(errs, errors.New("--busybox is required"))
	}
	return errors.Join(errs...)
}
