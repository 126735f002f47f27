package images

import (
	"archive/tar"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// maxJSON bounds the blobs Verify keeps in memory to decode.
const maxJSON = 4 << 20

// Contents is what a verified archive holds.
type Contents struct {
	Index ocispec.Index
	// Manifests and Configs follow the index's order.
	Manifests []ocispec.Manifest
	Configs   []ocispec.Image
}

// Refs returns the references the index names its manifests by (the
// io.containerd.image.name annotation).
func (c *Contents) Refs() []string {
	var refs []string
	for _, m := range c.Index.Manifests {
		if r := m.Annotations[AnnotationImageName]; r != "" {
			refs = append(refs, r)
		}
	}
	return refs
}

// VerifyFile is Verify of the archive in the file name.
func VerifyFile(name string) (*Contents, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	c, err := Verify(f)
	if err != nil {
		return nil, fmt.Errorf("verify %s: %w", name, err)
	}
	return c, nil
}

// Verify reads an OCI image archive and checks that it is whole: every blob
// has the digest its name says, and the index, manifests and configs refer
// only to blobs it holds, with their sizes; an uncompressed layer's digest
// is its config's diff ID.
func Verify(r io.Reader) (*Contents, error) {
	a, err := readArchive(r)
	if err != nil {
		return nil, err
	}
	if err := a.checkLayout(); err != nil {
		return nil, err
	}
	c, err := a.decodeIndex()
	if err != nil {
		return nil, err
	}
	for _, md := range c.Index.Manifests {
		m, cfg, err := a.image(md)
		if err != nil {
			return nil, err
		}
		c.Manifests = append(c.Manifests, m)
		c.Configs = append(c.Configs, cfg)
	}
	return c, nil
}

// archive is what Verify read from an archive: the layout and index files,
// every blob's size, and the blobs small enough to decode.
type archive struct {
	layout []byte
	index  []byte
	sizes  map[digest.Digest]int64
	small  map[digest.Digest][]byte
}

// readArchive reads every file of the archive, checking each blob against
// its digest.
func readArchive(r io.Reader) (*archive, error) {
	a := &archive{sizes: map[digest.Digest]int64{}, small: map[digest.Digest][]byte{}}
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		if hdr.Typeflag == tar.TypeDir {
			continue
		}
		if hdr.Typeflag != tar.TypeReg {
			return nil, fmt.Errorf("%s: not a regular file", hdr.Name)
		}
		name := path.Clean(hdr.Name)
		switch {
		case name == ocispec.ImageLayoutFile:
			if a.layout, err = readSmall(tr, name); err != nil {
				return nil, err
			}
		case name == ocispec.ImageIndexFile:
			if a.index, err = readSmall(tr, name); err != nil {
				return nil, err
			}
		case strings.HasPrefix(name, "blobs/"):
			if err := a.readBlob(tr, hdr, name); err != nil {
				return nil, err
			}
		default:
			return nil, fmt.Errorf("%s: unexpected file", hdr.Name)
		}
	}
	return a, nil
}

// readBlob reads the blob at name, checks it against the digest its name
// says, and records its size (and its content when it is small).
func (a *archive) readBlob(tr *tar.Reader, hdr *tar.Header, name string) error {
	want := digest.Digest(strings.Replace(strings.TrimPrefix(name, "blobs/"), "/", ":", 1))
	if err := want.Validate(); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	v := want.Verifier()
	var keep []byte
	var n int64
	var err error
	if hdr.Size <= maxJSON {
		keep, err = io.ReadAll(tr)
		n = int64(len(keep))
		_, _ = v.Write(keep)
	} else {
		n, err = io.Copy(v, tr)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if !v.Verified() {
		return fmt.Errorf("%s: content does not match its digest", name)
	}
	a.sizes[want] = n
	if keep != nil {
		a.small[want] = keep
	}
	return nil
}

// checkLayout checks that the archive has an oci-layout file of the
// version this package writes.
func (a *archive) checkLayout() error {
	var l ocispec.ImageLayout
	if a.layout == nil {
		return errors.New("no " + ocispec.ImageLayoutFile)
	}
	if err := json.Unmarshal(a.layout, &l); err != nil {
		return fmt.Errorf("%s: %w", ocispec.ImageLayoutFile, err)
	}
	if l.Version != ocispec.ImageLayoutVersion {
		return fmt.Errorf("%s: version %q, want %q", ocispec.ImageLayoutFile, l.Version, ocispec.ImageLayoutVersion)
	}
	return nil
}

// decodeIndex decodes the archive's index.json, which must name a manifest.
func (a *archive) decodeIndex() (*Contents, error) {
	if a.index == nil {
		return nil, errors.New("no " + ocispec.ImageIndexFile)
	}
	c := &Contents{}
	if err := json.Unmarshal(a.index, &c.Index); err != nil {
		return nil, fmt.Errorf("%s: %w", ocispec.ImageIndexFile, err)
	}
	if len(c.Index.Manifests) == 0 {
		return nil, fmt.Errorf("%s: no manifests", ocispec.ImageIndexFile)
	}
	return c, nil
}

// image decodes the manifest md names and its config, and checks that the
// archive holds its layers with their sizes, that an uncompressed layer's
// digest is the config's diff ID, and that the platforms agree.
func (a *archive) image(md ocispec.Descriptor) (ocispec.Manifest, ocispec.Image, error) {
	var m ocispec.Manifest
	var cfg ocispec.Image
	if md.MediaType != ocispec.MediaTypeImageManifest {
		return m, cfg, fmt.Errorf("manifest %s: media type %q", md.Digest, md.MediaType)
	}
	if err := a.blobJSON("manifest", md, &m); err != nil {
		return m, cfg, err
	}
	if err := a.blobJSON("config", m.Config, &cfg); err != nil {
		return m, cfg, err
	}
	if len(cfg.RootFS.DiffIDs) != len(m.Layers) {
		return m, cfg, fmt.Errorf("manifest %s: %d layers, config has %d diff IDs", md.Digest, len(m.Layers), len(cfg.RootFS.DiffIDs))
	}
	for i, ld := range m.Layers {
		if err := a.blobJSON("layer", ld, nil); err != nil {
			return m, cfg, err
		}
		if ld.MediaType == ocispec.MediaTypeImageLayer && cfg.RootFS.DiffIDs[i] != ld.Digest {
			return m, cfg, fmt.Errorf("layer %s: uncompressed, but config's diff ID is %s", ld.Digest, cfg.RootFS.DiffIDs[i])
		}
	}
	if p := md.Platform; p != nil && (p.OS != cfg.OS || p.Architecture != cfg.Architecture) {
		return m, cfg, fmt.Errorf("manifest %s: index says %s/%s, config %s/%s", md.Digest, p.OS, p.Architecture, cfg.OS, cfg.Architecture)
	}
	return m, cfg, nil
}

// blobJSON checks that the archive holds the blob d describes, with its
// size, and decodes it into v unless v is nil.
func (a *archive) blobJSON(what string, d ocispec.Descriptor, v any) error {
	size, ok := a.sizes[d.Digest]
	if !ok {
		return fmt.Errorf("%s %s: no such blob", what, d.Digest)
	}
	if size != d.Size {
		return fmt.Errorf("%s %s: size %d, descriptor says %d", what, d.Digest, size, d.Size)
	}
	if v == nil {
		return nil
	}
	data, ok := a.small[d.Digest]
	if !ok {
		return fmt.Errorf("%s %s: larger than %d bytes", what, d.Digest, maxJSON)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("%s %s: %w", what, d.Digest, err)
	}
	return nil
}

func readSmall(r io.Reader, name string) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxJSON+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if len(data) > maxJSON {
		return nil, fmt.Errorf("%s: larger than %d bytes", name, maxJSON)
	}
	return data, nil
}
