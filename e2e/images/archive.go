package images

import (
	"archive/tar"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// epoch is every mtime in an archive and its layer.
var epoch = time.Unix(0, 0)

// Archive is an image ready to be written: its layer hashed, its config,
// manifest and index encoded. Preparing reads every source file once;
// writing reads them again and fails if any changed in between.
type Archive struct {
	// Ref is the image's reference.
	Ref string
	// Manifest is the descriptor of the image manifest; its digest is what
	// names the image's content (the same inputs give the same digest).
	Manifest ocispec.Descriptor
	// Config is the digest of the image config: the image ID that
	// `crictl images` shows.
	Config digest.Digest
	// Size is the archive's size in bytes.
	Size int64

	entries []Entry
	layer   ocispec.Descriptor
	blobs   []blob // config, manifest
	index   []byte
}

type blob struct {
	digest digest.Digest
	data   []byte
}

// Prepare checks the image and computes its archive.
func Prepare(img Image) (*Archive, error) {
	if img.Ref == "" {
		return nil, errors.New("image has no reference")
	}
	if tag(img.Ref) == "" {
		return nil, fmt.Errorf("image %s: reference has no tag", img.Ref)
	}
	entries, err := img.entries()
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", img.Ref, err)
	}
	a := &Archive{Ref: img.Ref, entries: entries}
	d := digest.SHA256.Digester()
	cw := &countingWriter{w: d.Hash()}
	if err := writeLayer(cw, entries); err != nil {
		return nil, fmt.Errorf("image %s: layer: %w", img.Ref, err)
	}
	a.layer = ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: d.Digest(), Size: cw.n}

	platform := img.platform()
	config, err := json.Marshal(ocispec.Image{
		Platform: platform,
		Config:   img.Config,
		// The layer is uncompressed: its digest is its diff ID.
		RootFS: ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{a.layer.Digest}},
	})
	if err != nil {
		return nil, fmt.Errorf("image %s: encode config: %w", img.Ref, err)
	}
	configDesc := descriptor(ocispec.MediaTypeImageConfig, config)
	manifest, err := json.Marshal(ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    configDesc,
		Layers:    []ocispec.Descriptor{a.layer},
	})
	if err != nil {
		return nil, fmt.Errorf("image %s: encode manifest: %w", img.Ref, err)
	}
	a.Manifest = descriptor(ocispec.MediaTypeImageManifest, manifest)
	a.Config = configDesc.Digest
	a.blobs = []blob{{configDesc.Digest, config}, {a.Manifest.Digest, manifest}}

	entry := a.Manifest
	entry.Platform = &platform
	entry.Annotations = map[string]string{
		ocispec.AnnotationRefName: tag(img.Ref),
		AnnotationImageName:       img.Ref,
	}
	a.index, err = json.Marshal(ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageIndex,
		Manifests: []ocispec.Descriptor{entry},
	})
	if err != nil {
		return nil, fmt.Errorf("image %s: encode index: %w", img.Ref, err)
	}

	cw = &countingWriter{w: io.Discard}
	if err := a.write(cw, false); err != nil {
		return nil, fmt.Errorf("image %s: %w", img.Ref, err)
	}
	a.Size = cw.n
	return a, nil
}

func descriptor(mediaType string, data []byte) ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(data), Size: int64(len(data))}
}

// WriteTo writes the archive to w.
func (a *Archive) WriteTo(w io.Writer) (int64, error) {
	cw := &countingWriter{w: w}
	if err := a.write(cw, true); err != nil {
		return cw.n, fmt.Errorf("image %s: %w", a.Ref, err)
	}
	return cw.n, nil
}

// WriteFile writes the archive to the file name, atomically: a reader sees
// the old file or the whole new one.
func (a *Archive) WriteFile(name string) error {
	f, err := os.CreateTemp(filepath.Dir(name), "."+filepath.Base(name)+".tmp-")
	if err != nil {
		return err
	}
	defer func() { _ = os.Remove(f.Name()) }() // fails once renamed
	if _, err := a.WriteTo(f); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Chmod(0o644); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), name)
}

// write writes the outer tar. With withLayer false the layer's bytes are
// replaced by zeros of the same length (to measure the archive).
func (a *Archive) write(w io.Writer, withLayer bool) error {
	tw := tar.NewWriter(w)
	layout, err := json.Marshal(ocispec.ImageLayout{Version: ocispec.ImageLayoutVersion})
	if err != nil {
		return err
	}
	if err := writeTarFile(tw, ocispec.ImageLayoutFile, layout); err != nil {
		return err
	}
	if err := tw.WriteHeader(outerHeader(blobPath(a.layer.Digest), a.layer.Size)); err != nil {
		return err
	}
	if withLayer {
		d := digest.SHA256.Digester()
		if err := writeLayer(io.MultiWriter(tw, d.Hash()), a.entries); err != nil {
			return fmt.Errorf("layer: %w", err)
		}
		if d.Digest() != a.layer.Digest {
			return fmt.Errorf("layer: its files changed since it was prepared (digest %s, was %s)", d.Digest(), a.layer.Digest)
		}
	} else if _, err := io.CopyN(tw, zeros{}, a.layer.Size); err != nil {
		return err
	}
	for _, b := range a.blobs {
		if err := writeTarFile(tw, blobPath(b.digest), b.data); err != nil {
			return err
		}
	}
	if err := writeTarFile(tw, ocispec.ImageIndexFile, a.index); err != nil {
		return err
	}
	return tw.Close()
}

func blobPath(d digest.Digest) string {
	return "blobs/" + d.Algorithm().String() + "/" + d.Encoded()
}

func outerHeader(name string, size int64) *tar.Header {
	return &tar.Header{Typeflag: tar.TypeReg, Name: name, Size: size, Mode: 0o644, ModTime: epoch, Format: tar.FormatPAX}
}

func writeTarFile(tw *tar.Writer, name string, data []byte) error {
	if err := tw.WriteHeader(outerHeader(name, int64(len(data)))); err != nil {
		return err
	}
	_, err := tw.Write(data)
	return err
}

// writeLayer writes the layer tar of sorted, checked entries.
func writeLayer(w io.Writer, entries []Entry) error {
	tw := tar.NewWriter(w)
	for _, e := range entries {
		hdr := &tar.Header{Name: e.Path, Mode: tarMode(e.Mode), ModTime: epoch, Format: tar.FormatPAX}
		switch e.Type {
		case TypeDir:
			hdr.Typeflag = tar.TypeDir
			hdr.Name += "/"
			if err := tw.WriteHeader(hdr); err != nil {
				return err
			}
		case TypeSymlink:
			hdr.Typeflag = tar.TypeSymlink
			hdr.Linkname = e.Target
			if err := tw.WriteHeader(hdr); err != nil {
				return err
			}
		case TypeFile:
			hdr.Typeflag = tar.TypeReg
			if e.Source == "" {
				hdr.Size = int64(len(e.Data))
				if err := tw.WriteHeader(hdr); err != nil {
					return err
				}
				if _, err := tw.Write(e.Data); err != nil {
					return err
				}
				continue
			}
			if err := copySource(tw, hdr, e.Source); err != nil {
				return fmt.Errorf("/%s: %w", e.Path, err)
			}
		}
	}
	return tw.Close()
}

func copySource(tw *tar.Writer, hdr *tar.Header, source string) error {
	f, err := os.Open(source)
	if err != nil {
		return err
	}
	defer func() { _ = f.Close() }()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("source %s is not a regular file", source)
	}
	hdr.Size = st.Size()
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	if _, err := io.CopyN(tw, f, hdr.Size); err != nil {
		return fmt.Errorf("read %s: %w", source, err)
	}
	return nil
}

// tarMode is the tar header mode of permission bits with setuid, setgid and
// sticky.
func tarMode(m fs.FileMode) int64 {
	mode := int64(m.Perm())
	if m&fs.ModeSetuid != 0 {
		mode |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		mode |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		mode |= 0o1000
	}
	return mode
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
