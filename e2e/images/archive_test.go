package images

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// testImage is an image of every entry type, with a host file as source.
func testImage(t *testing.T) Image {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "tool")
	if err := os.WriteFile(bin, []byte("#!/bin/true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return Image{
		Ref: "example.com/tools/tool:1.2",
		Entries: []Entry{
			Symlink("/bin/sh", "tool"),
			File("/bin/tool", bin, 0o755),
			Content("/etc/passwd", []byte("root:x:0:0:root:/root:/bin/sh\n"), 0),
			Dir("/tmp", 0o777|fs.ModeSticky),
			File("/usr/local/bin/tool-suid", bin, 0o755|fs.ModeSetuid),
		},
		Config: ocispec.ImageConfig{
			Entrypoint: []string{"/bin/tool"},
			Cmd:        []string{"serve"},
			Env:        []string{"PATH=/bin"},
			WorkingDir: "/tmp",
			User:       "65534:65534",
		},
	}
}

func writeArchive(t *testing.T, img Image) (*Archive, []byte) {
	t.Helper()
	a, err := Prepare(img)
	if err != nil {
		t.Fatalf("prepare: %v", err)
	}
	var buf bytes.Buffer
	n, err := a.WriteTo(&buf)
	if err != nil {
		t.Fatalf("write: %v", err)
	}
	if n != a.Size || int64(buf.Len()) != a.Size {
		t.Errorf("wrote %d bytes (buffer %d), Prepare said %d", n, buf.Len(), a.Size)
	}
	return a, buf.Bytes()
}

// tarEntry is what a test compares of a tar header (and a file's content).
type tarEntry struct {
	Name     string
	Type     byte
	Mode     int64
	Linkname string
	Content  string
	Uid, Gid int
	Unix     int64
}

func readTar(t *testing.T, data []byte) []tarEntry {
	t.Helper()
	var out []tarEntry
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("read tar: %v", err)
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, tarEntry{hdr.Name, hdr.Typeflag, hdr.Mode, hdr.Linkname, string(body), hdr.Uid, hdr.Gid, hdr.ModTime.Unix()})
	}
}

// blobOf returns the content of the archive's blob with digest d.
func blobOf(t *testing.T, archive []byte, d digest.Digest) []byte {
	t.Helper()
	for _, e := range readTar(t, archive) {
		if e.Name == blobPath(d) {
			return []byte(e.Content)
		}
	}
	t.Fatalf("archive has no blob %s", d)
	return nil
}

func TestArchiveIsConsistent(t *testing.T) {
	img := testImage(t)
	a, data := writeArchive(t, img)
	c, err := Verify(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("verify: %v", err)
	}

	var names []string
	for _, e := range readTar(t, data) {
		names = append(names, e.Name)
	}
	layer := c.Manifests[0].Layers[0]
	wantNames := []string{"oci-layout", blobPath(layer.Digest), blobPath(c.Manifests[0].Config.Digest), blobPath(a.Manifest.Digest), "index.json"}
	if diff := cmp.Diff(wantNames, names); diff != "" {
		t.Errorf("archive files (-want +got):\n%s", diff)
	}

	if len(c.Index.Manifests) != 1 {
		t.Fatalf("index has %d manifests", len(c.Index.Manifests))
	}
	entry := c.Index.Manifests[0]
	if entry.Digest != a.Manifest.Digest || entry.Size != a.Manifest.Size {
		t.Errorf("index entry %s/%d, Prepare said %s/%d", entry.Digest, entry.Size, a.Manifest.Digest, a.Manifest.Size)
	}
	wantAnn := map[string]string{ocispec.AnnotationRefName: "1.2", AnnotationImageName: img.Ref}
	if diff := cmp.Diff(wantAnn, entry.Annotations); diff != "" {
		t.Errorf("index annotations (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{img.Ref}, c.Refs()); diff != "" {
		t.Errorf("refs (-want +got):\n%s", diff)
	}
	if c.Manifests[0].Config.Digest != a.Config {
		t.Errorf("config %s, Prepare said %s", c.Manifests[0].Config.Digest, a.Config)
	}
	cfg := c.Configs[0]
	if cfg.OS != "linux" || cfg.Architecture != runtime.GOARCH {
		t.Errorf("platform %s/%s, want linux/%s", cfg.OS, cfg.Architecture, runtime.GOARCH)
	}
	if diff := cmp.Diff(img.Config, cfg.Config); diff != "" {
		t.Errorf("image config (-want +got):\n%s", diff)
	}
	if layer.MediaType != ocispec.MediaTypeImageLayer {
		t.Errorf("layer media type %s", layer.MediaType)
	}

	tool := "#!/bin/true\n"
	want := []tarEntry{
		{Name: "bin/", Type: tar.TypeDir, Mode: 0o755},
		{Name: "bin/sh", Type: tar.TypeSymlink, Mode: 0o777, Linkname: "tool"},
		{Name: "bin/tool", Type: tar.TypeReg, Mode: 0o755, Content: tool},
		{Name: "etc/", Type: tar.TypeDir, Mode: 0o755},
		{Name: "etc/passwd", Type: tar.TypeReg, Mode: 0o644, Content: "root:x:0:0:root:/root:/bin/sh\n"},
		{Name: "tmp/", Type: tar.TypeDir, Mode: 0o1777},
		{Name: "usr/", Type: tar.TypeDir, Mode: 0o755},
		{Name: "usr/local/", Type: tar.TypeDir, Mode: 0o755},
		{Name: "usr/local/bin/", Type: tar.TypeDir, Mode: 0o755},
		{Name: "usr/local/bin/tool-suid", Type: tar.TypeReg, Mode: 0o4755, Content: tool},
	}
	if diff := cmp.Diff(want, readTar(t, blobOf(t, data, layer.Digest))); diff != "" {
		t.Errorf("layer (-want +got):\n%s", diff)
	}
}

func TestSameInputSameDigest(t *testing.T) {
	img := testImage(t)
	a1, data1 := writeArchive(t, img)
	reversed := img
	reversed.Entries = nil
	for i := len(img.Entries) - 1; i >= 0; i-- {
		reversed.Entries = append(reversed.Entries, img.Entries[i])
	}
	a2, data2 := writeArchive(t, reversed)
	if a1.Manifest.Digest != a2.Manifest.Digest || !bytes.Equal(data1, data2) {
		t.Errorf("same entries in another order: manifest %s, then %s (archives equal: %t)", a1.Manifest.Digest, a2.Manifest.Digest, bytes.Equal(data1, data2))
	}

	// A source file touched but not changed gives the same image.
	src := img.Entries[1].Source
	if err := os.Chtimes(src, epoch, epoch); err != nil {
		t.Fatal(err)
	}
	if a3, _ := writeArchive(t, img); a3.Manifest.Digest != a1.Manifest.Digest {
		t.Errorf("mtime of a source changed the digest: %s, was %s", a3.Manifest.Digest, a1.Manifest.Digest)
	}

	changes := map[string]func(img *Image){
		"content": func(img *Image) { img.Entries[2].Data = []byte("root:x:0:0::/:/bin/sh\n") },
		"mode":    func(img *Image) { img.Entries[1].Mode = 0o700 },
		"config":  func(img *Image) { img.Config.Cmd = []string{"other"} },
		"ref":     func(img *Image) { img.Ref = "example.com/tools/tool:1.3" },
	}
	for name, change := range changes {
		t.Run(name, func(t *testing.T) {
			changed := img
			changed.Entries = append([]Entry{}, img.Entries...)
			change(&changed)
			a, err := Prepare(changed)
			if err != nil {
				t.Fatal(err)
			}
			if name == "ref" {
				// The manifest is the same content; only the index names it differently.
				if a.Manifest.Digest != a1.Manifest.Digest {
					t.Errorf("another name changed the manifest")
				}
				return
			}
			if a.Manifest.Digest == a1.Manifest.Digest {
				t.Errorf("changed %s, same manifest digest %s", name, a.Manifest.Digest)
			}
		})
	}
}

func TestSourceChangedAfterPrepare(t *testing.T) {
	img := testImage(t)
	a, err := Prepare(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(img.Entries[1].Source, []byte("#!/bin/fals\n"), 0o600); err != nil { // same size
		t.Fatal(err)
	}
	_, err = a.WriteTo(io.Discard)
	if err == nil || !strings.Contains(err.Error(), "changed since it was prepared") {
		t.Errorf("write after the source changed: %v, want an error that says so", err)
	}
}

func TestWriteFile(t *testing.T) {
	a, data := writeArchive(t, testImage(t))
	name := filepath.Join(t.TempDir(), "tool.oci.tar")
	if err := a.WriteFile(name); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Errorf("WriteFile wrote other bytes than WriteTo")
	}
	if _, err := VerifyFile(name); err != nil {
		t.Error(err)
	}
	left, _ := filepath.Glob(filepath.Join(filepath.Dir(name), ".*tmp*"))
	if len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}
}

func TestInvalidImages(t *testing.T) {
	tests := map[string]struct {
		img  Image
		want string
	}{
		"no ref":          {Image{Entries: []Entry{Dir("/tmp", 0)}}, "no reference"},
		"no tag":          {Image{Ref: "example.com/x"}, "no tag"},
		"relative path":   {Image{Ref: "x:1", Entries: []Entry{Dir("tmp", 0)}}, "not absolute"},
		"root":            {Image{Ref: "x:1", Entries: []Entry{Dir("/", 0)}}, "is the root"},
		"twice":           {Image{Ref: "x:1", Entries: []Entry{Dir("/tmp", 0), Dir("/tmp/", 0)}}, "listed twice"},
		"parent is file":  {Image{Ref: "x:1", Entries: []Entry{Content("/a", nil, 0), Content("/a/b", nil, 0)}}, "not a directory"},
		"symlink":         {Image{Ref: "x:1", Entries: []Entry{Symlink("/a", "")}}, "without a target"},
		"type bits":       {Image{Ref: "x:1", Entries: []Entry{Dir("/a", fs.ModeDir|0o755)}}, "type bits"},
		"missing source":  {Image{Ref: "x:1", Entries: []Entry{File("/a", "/nonexistent/file", 0)}}, "no such file"},
		"source and data": {Image{Ref: "x:1", Entries: []Entry{{Path: "/a", Source: "/etc/hostname", Data: []byte{}}}}, "both"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := Prepare(tt.img)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Prepare: %v, want an error with %q", err, tt.want)
			}
		})
	}
}

// rewrite copies an archive, changing the content of the file name.
func rewrite(t *testing.T, data []byte, name string, change func([]byte) []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range readTar(t, data) {
		body := []byte(e.Content)
		if e.Name == name {
			body = change(body)
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: e.Type, Name: e.Name, Size: int64(len(body)), Mode: e.Mode}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestVerifyFindsDamage(t *testing.T) {
	a, data := writeArchive(t, testImage(t))
	c, err := Verify(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	layer := c.Manifests[0].Layers[0].Digest
	tests := map[string]struct {
		file   string
		change func([]byte) []byte
		want   string
	}{
		"layer byte": {blobPath(layer), func(b []byte) []byte { b[len(b)/2] ^= 1; return b }, "does not match its digest"},
		"index size": {"index.json", func(b []byte) []byte {
			return bytes.Replace(b, []byte(`"size":`), []byte(`"size":1`), 1)
		}, "size"},
		"layout version": {"oci-layout", func([]byte) []byte { return []byte(`{"imageLayoutVersion":"2.0.0"}`) }, "version"},
		"no manifest blob": {"index.json", func(b []byte) []byte {
			return bytes.Replace(b, []byte(a.Manifest.Digest.Encoded()), []byte(strings.Repeat("0", 64)), 1)
		}, "no such blob"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := Verify(bytes.NewReader(rewrite(t, data, tt.file, tt.change)))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Verify: %v, want an error with %q", err, tt.want)
			}
		})
	}
}
