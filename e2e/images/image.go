// Package images builds OCI image archives from local files, for a test bed
// that has no registry: an image is a set of files, directories and symlinks
// in one uncompressed layer plus an image config, written as an OCI image
// layout in a tar (oci-layout, index.json, blobs/sha256/...) that
// `ctr images import` reads and names.
//
// The output is a function of the input alone: entries are sorted, every
// mtime is the Unix epoch, owners are root and no build time is recorded,
// so the same files give the same manifest digest on every build.
package images

import (
	"errors"
	"fmt"
	"io/fs"
	"path"
	"runtime"
	"sort"
	"strings"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// AnnotationImageName is the index annotation containerd names an imported
// image by (containerd's images.AnnotationImageName).
const AnnotationImageName = "io.containerd.image.name"

// Image is what an archive is built from.
type Image struct {
	// Ref is the image's full reference, e.g. "registry.k8s.io/pause:3.10.2".
	Ref string
	// Entries make up the image's one layer. Parent directories that are
	// not listed are added with mode 0755.
	Entries []Entry
	// Config holds Entrypoint, Cmd, Env, WorkingDir and User.
	Config ocispec.ImageConfig
	// OS and Architecture default to linux and the architecture this
	// program was built for (the binaries it packs are built alike).
	OS           string
	Architecture string
}

// EntryType is the kind of a layer entry.
type EntryType int

const (
	TypeFile EntryType = iota
	TypeDir
	TypeSymlink
)

// Entry is one file, directory or symlink of the layer.
type Entry struct {
	// Path is the absolute path in the image.
	Path string
	Type EntryType
	// Source is the host file a TypeFile entry's content is read from;
	// Data is the content when Source is empty.
	Source string
	Data   []byte
	// Mode is the permission bits with setuid, setgid and sticky; zero
	// means 0644 for a file and 0755 for a directory.
	Mode fs.FileMode
	// Target is a symlink's target.
	Target string
}

// File is a regular file whose content is read from the host file source.
func File(path, source string, mode fs.FileMode) Entry {
	return Entry{Path: path, Type: TypeFile, Source: source, Mode: mode}
}

// Content is a regular file with the given content.
func Content(path string, data []byte, mode fs.FileMode) Entry {
	return Entry{Path: path, Type: TypeFile, Data: data, Mode: mode}
}

// Dir is a directory.
func Dir(path string, mode fs.FileMode) Entry {
	return Entry{Path: path, Type: TypeDir, Mode: mode}
}

// Symlink is a symbolic link to target.
func Symlink(path, target string) Entry {
	return Entry{Path: path, Type: TypeSymlink, Target: target}
}

// platform returns the image's OS and architecture with defaults.
func (img *Image) platform() ocispec.Platform {
	p := ocispec.Platform{OS: img.OS, Architecture: img.Architecture}
	if p.OS == "" {
		p.OS = "linux"
	}
	if p.Architecture == "" {
		p.Architecture = runtime.GOARCH
	}
	return p
}

// tag is the tag of a reference ("" if it has none).
func tag(ref string) string {
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		return ref[i+1:]
	}
	return ""
}

// entries validates the entries and returns them with paths cleaned and
// relative ("usr/bin/x"), the missing parent directories added, sorted by
// path.
func (img *Image) entries() ([]Entry, error) {
	var errs []error
	byPath := map[string]Entry{}
	for _, e := range img.Entries {
		p, err := layerPath(e.Path)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if _, dup := byPath[p]; dup {
			errs = append(errs, fmt.Errorf("entry %s: listed twice", e.Path))
			continue
		}
		switch e.Type {
		case TypeFile:
			if e.Mode == 0 {
				e.Mode = 0o644
			}
			if e.Source != "" && e.Data != nil {
				errs = append(errs, fmt.Errorf("entry %s: both a source and data", e.Path))
			}
		case TypeDir:
			if e.Mode == 0 {
				e.Mode = 0o755
			}
		case TypeSymlink:
			if e.Target == "" {
				errs = append(errs, fmt.Errorf("entry %s: symlink without a target", e.Path))
			}
			e.Mode = 0o777
		default:
			errs = append(errs, fmt.Errorf("entry %s: unknown type %d", e.Path, e.Type))
		}
		if e.Mode&^(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky) != 0 {
			errs = append(errs, fmt.Errorf("entry %s: mode %s has type bits", e.Path, e.Mode))
		}
		e.Path = p
		byPath[p] = e
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	for p, e := range byPath {
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			parent, ok := byPath[d]
			if !ok {
				byPath[d] = Entry{Path: d, Type: TypeDir, Mode: 0o755}
				continue
			}
			if parent.Type != TypeDir {
				errs = append(errs, fmt.Errorf("entry /%s: parent /%s is not a directory", e.Path, d))
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	out := make([]Entry, 0, len(byPath))
	for _, e := range byPath {
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, nil
}

// layerPath turns an absolute image path into a layer tar name.
func layerPath(p string) (string, error) {
	if !path.IsAbs(p) {
		return "", fmt.Errorf("entry %q: path is not absolute", p)
	}
	c := strings.TrimPrefix(path.Clean(p), "/")
	if c == "" {
		return "", fmt.Errorf("entry %q: is the root", p)
	}
	return c, nil
}
