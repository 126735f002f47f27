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
	var (
		tr     = tar.NewReader(r)
		layout []byte
		index  []byte
		sizes  = map[digest.Digest]int64{}
		small  = map[digest.Digest][]byte{}
	)
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
			if layout, err = readSmall(tr, name); err != nil {
				return nil, err
			}
		case name == ocispec.ImageIndexFile:
			if index, err = readSmall(tr, name); err != nil {
				return nil, err
			}
		case strings.HasPrefix(name, "blobs/"):
			want := digest.Digest(strings.Replace(strings.TrimPrefix(name, "blobs/"), "/", ":", 1))
			if err := want.Validate(); err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			v := want.Verifier()
			var keep []byte
			var n int64
			if hdr.Size <= maxJSON {
				keep, err = io.ReadAll(tr)
				n = int64(len(keep))
				_, _ = v.Write(keep)
			} else {
				n, err = io.Copy(v, tr)
			}
			if err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			if !v.Verified() {
				return nil, fmt.Errorf("%s: content does not match its digest", name)
			}
			sizes[want] = n
			if keep != nil {
				small[want] = keep
			}
		default:
			return nil, fmt.Errorf("%s: unexpected file", hdr.Name)
		}
	}

	var l ocispec.ImageLayout
	if layout == nil {
		return nil, errors.New("no " + ocispec.ImageLayoutFile)
	}
	if err := json.Unmarshal(layout, &l); err != nil {
		return nil, fmt.Errorf("%s: %w", ocispec.ImageLayoutFile, err)
	}
	if l.Version != ocispec.ImageLayoutVersion {
		return nil, fmt.Errorf("%s: version %q, want %q", ocispec.ImageLayoutFile, l.Version, ocispec.ImageLayoutVersion)
	}
	if index == nil {
		return nil, errors.New("no " + ocispec.ImageIndexFile)
	}
	c := &Contents{}
	if err := json.Unmarshal(index, &c.Index); err != nil {
		return nil, fmt.Errorf("%s: %w", ocispec.ImageIndexFile, err)
	}
	if len(c.Index.Manifests) == 0 {
		return nil, fmt.Errorf("%s: no manifests", ocispec.ImageIndexFile)
	}
	blobJSON := func(what string, d ocispec.Descriptor, v any) error {
		size, ok := sizes[d.Digest]
		if !ok {
			return fmt.Errorf("%s %s: no such blob", what, d.Digest)
		}
		if size != d.Size {
			return fmt.Errorf("%s %s: size %d, descriptor says %d", what, d.Digest, size, d.Size)
		}
		if v == nil {
			return nil
		}
		data, ok := small[d.Digest]
		if !ok {
			return fmt.Errorf("%s %s: larger than %d bytes", what, d.Digest, maxJSON)
		}
		if err := json.Unmarshal(data, v); err != nil {
			return fmt.Errorf("%s %s: %w", what, d.Digest, err)
		}
		return nil
	}
	for _, md := range c.Index.Manifests {
		if md.MediaType != ocispec.MediaTypeImageManifest {
			return nil, fmt.Errorf("manifest %s: media type %q", md.Digest, md.MediaType)
		}
		var m ocispec.Manifest
		if err := blobJSON("manifest", md, &m); err != nil {
			return nil, err
		}
		var cfg ocispec.Image
		if err := blobJSON("config", m.Config, &cfg); err != nil {
			return nil, err
		}
		if len(cfg.RootFS.DiffIDs) != len(m.Layers) {
			return nil, fmt.Errorf("manifest %s: %d layers, config has %d diff IDs", md.Digest, len(m.Layers), len(cfg.RootFS.DiffIDs))
		}
		for i, ld := range m.Layers {
			if err := blobJSON("layer", ld, nil); err != nil {
				return nil, err
			}
			if ld.MediaType == ocispec.MediaTypeImageLayer && cfg.RootFS.DiffIDs[i] != ld.Digest {
				return nil, fmt.Errorf("layer %s: uncompressed, but config's diff ID is %s", ld.Digest, cfg.RootFS.DiffIDs[i])
			}
		}
		if p := md.Platform; p != nil && (p.OS != cfg.OS || p.Architecture != cfg.Architecture) {
			return nil, fmt.Errorf("manifest %s: index says %s/%s, config %s/%s", md.Digest, p.OS, p.Architecture, cfg.OS, cfg.Architecture)
		}
		c.Manifests = append(c.Manifests, m)
		c.Configs = append(c.Configs, cfg)
	}
	return c, nil
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
