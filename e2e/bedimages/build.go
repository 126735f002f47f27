package bedimages

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"github.com/opencontainers/go-digest"
	"go.uber.org/zap"

	"github.com/directlb/directlb/e2e/images"
)

// ListFile is the file in the output directory that lists the images:
// reference, archive and manifest digest, tab-separated, one a line.
const ListFile = "images.txt"

// binaries are the files of the bin dir the images need.
var binaries = []string{"lb-controller", "node-agent", "localcloud", "agnhost", "pause", "dlb-echo"}

// cniBinary is packed into the node-agent image when the bin dir has it;
// corednsBinary makes the cluster DNS image (hack/coredns, 'make tools').
const (
	cniBinary     = "directlb-cni"
	corednsBinary = "coredns"
)

// Result is one image's archive.
type Result struct {
	Name string
	Ref  string
	// Archive is the archive's absolute path.
	Archive string
	// Manifest is the manifest's digest; Config the image ID.
	Manifest digest.Digest
	Config   digest.Digest
	Size     int64
	// Built is false when the archive already held this very image.
	Built bool
}

// Build writes an archive per image into cfg.OutDir and the list of them.
// An image whose archive already holds the same manifest (same files,
// modes and config) and verifies whole is not written again.
func Build(ctx context.Context, cfg Config) ([]Result, error) {
	log := cfg.Log
	if log == nil {
		log = zap.NewNop()
	}
	in, err := inputs(ctx, cfg)
	if err != nil {
		return nil, err
	}
	out, err := filepath.Abs(cfg.OutDir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return nil, err
	}
	var results []Result
	for _, n := range Images(in) {
		r, err := build(n, out)
		if err != nil {
			return nil, err
		}
		log.Info("image", zap.String("image", r.Ref), zap.String("archive", r.Archive),
			zap.String("manifest", r.Manifest.String()), zap.Int64("bytes", r.Size), zap.Bool("built", r.Built))
		results = append(results, r)
	}
	if err := writeList(filepath.Join(out, ListFile), results); err != nil {
		return nil, err
	}
	return results, nil
}

func build(n Named, out string) (Result, error) {
	a, err := images.Prepare(n.Image)
	if err != nil {
		return Result{}, err
	}
	r := Result{
		Name: n.Name, Ref: a.Ref, Archive: filepath.Join(out, n.Name+".oci.tar"),
		Manifest: a.Manifest.Digest, Config: a.Config, Size: a.Size,
	}
	if c, err := images.VerifyFile(r.Archive); err == nil && holds(c, a) {
		return r, nil
	}
	if err := a.WriteFile(r.Archive); err != nil {
		return Result{}, fmt.Errorf("write %s: %w", r.Archive, err)
	}
	r.Built = true
	return r, nil
}

// holds says whether verified contents are exactly the prepared image.
func holds(c *images.Contents, a *images.Archive) bool {
	return len(c.Index.Manifests) == 1 && c.Index.Manifests[0].Digest == a.Manifest.Digest &&
		slices.Equal(c.Refs(), []string{a.Ref})
}

// inputs finds the images' inputs and checks the binaries.
func inputs(ctx context.Context, cfg Config) (Inputs, error) {
	in := Inputs{BinDir: cfg.BinDir, Busybox: cfg.Busybox}
	var err error
	if in.AppVersion, err = AppVersion(cfg.Chart); err != nil {
		return in, err
	}
	manifest := cfg.E2EManifest
	if manifest == "" {
		if manifest, err = LocateManifest(ctx, cfg.Go, cfg.ToolsModule); err != nil {
			return in, err
		}
	}
	// upstream's agnhost image has porter's test certificate at /localhost.crt
	// (netexec --tls-cert-file in the HTTPS hook tests); the pinned module has
	// it next to the manifest. A stand-in manifest (tests) has none.
	porter := filepath.Join(strings.TrimSuffix(manifest, ManifestPath), "test", "images", "agnhost", "porter")
	if _, err := os.Stat(filepath.Join(porter, "localhost.crt")); err == nil {
		in.PorterDir = porter
	}
	refs, err := E2ERefs(manifest)
	if err != nil {
		return in, err
	}
	var errs []error
	for id, ref := range map[string]*string{"Agnhost": &in.Agnhost, "BusyBox": &in.BusyBox, "Pause": &in.Pause} {
		if *ref = refs[id]; *ref == "" {
			errs = append(errs, fmt.Errorf("%s: no image %s", manifest, id))
		}
	}
	for _, b := range binaries {
		errs = append(errs, checkStatic(filepath.Join(cfg.BinDir, b)))
	}
	for b, present := range map[string]*bool{cniBinary: &in.CNI, corednsBinary: &in.CoreDNS} {
		p := filepath.Join(cfg.BinDir, b)
		if _, err := os.Stat(p); err == nil {
			*present = true
			errs = append(errs, checkStatic(p))
		}
	}
	if in.AgnhostTools, err = hostToolEntries(ctx, cfg.AgnhostTools); err != nil {
		errs = append(errs, err)
	}
	if err := checkStatic(cfg.Busybox); err != nil {
		errs = append(errs, fmt.Errorf("%w (Debian's busybox-static is)", err))
	} else if in.Applets, err = applets(ctx, cfg.Busybox); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return in, fmt.Errorf("image inputs: %w", err)
	}
	return in, nil
}

// checkStatic fails for a missing file and for an ELF executable that needs
// a dynamic loader, which an image without one cannot start.
func checkStatic(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer func() { _ = f.Close() }()
	magic := make([]byte, len(elf.ELFMAG))
	if _, err := io.ReadFull(f, magic); err != nil || string(magic) != elf.ELFMAG {
		return nil // not ELF (a script): the kernel finds its interpreter in the image
	}
	ef, err := elf.NewFile(f)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	for _, p := range ef.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked: build it with CGO_ENABLED=0", path)
		}
	}
	return nil
}

func applets(ctx context.Context, busybox string) ([]string, error) {
	out, err := exec.CommandContext(ctx, busybox, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --list: %w", busybox, err)
	}
	list := strings.Fields(string(out))
	if !slices.Contains(list, "sh") {
		return nil, fmt.Errorf("%s --list: no sh applet", busybox)
	}
	return list, nil
}

// Listed is a line of the list file.
type Listed struct {
	Ref      string
	Archive  string
	Manifest digest.Digest
}

func writeList(name string, results []Result) error {
	var b bytes.Buffer
	b.WriteString("# image reference, archive, manifest digest; written by dlb-testbed images\n")
	for _, r := range results {
		fmt.Fprintf(&b, "%s\t%s\t%s\n", r.Ref, r.Archive, r.Manifest)
	}
	f, err := os.CreateTemp(filepath.Dir(name), "."+filepath.Base(name)+".tmp-")
	if err != nil {
		return err
	}
	defer func() { _ = os.Remove(f.Name()) }() // fails once renamed
	_, err = f.Write(b.Bytes())
	if err == nil {
		err = f.Chmod(0o644)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Rename(f.Name(), name)
}

// ReadList reads a list file that Build wrote.
func ReadList(name string) ([]Listed, error) {
	data, err := os.ReadFile(name)
	if err != nil {
		return nil, err
	}
	var out []Listed
	sc := bufio.NewScanner(bytes.NewReader(data))
	for line := 1; sc.Scan(); line++ {
		text := sc.Text()
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		f := strings.Split(text, "\t")
		if len(f) != 3 {
			return nil, fmt.Errorf("%s:%d: want reference, archive and digest", name, line)
		}
		d, err := digest.Parse(f[2])
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", name, line, err)
		}
		out = append(out, Listed{Ref: f[0], Archive: f[1], Manifest: d})
	}
	return out, sc.Err()
}
