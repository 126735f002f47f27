// Package bedimages is the set of container images the test bed's kubelets
// run, built without a registry into OCI archives (package e2e/images) from
// the binaries in the bin dir, and the cache that skips an image whose
// inputs have not changed. See docs/testbed.md, "Images without a registry".
package bedimages

import (
	"io/fs"
	"path/filepath"
	"slices"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/directlb/directlb/e2e/images"
)

// Repositories of the project's own images; their tag is the chart's
// appVersion.
const (
	LBControllerRepo = "ghcr.io/directlb/lb-controller"
	NodeAgentRepo    = "ghcr.io/directlb/node-agent"
	LocalcloudRepo   = "ghcr.io/directlb/localcloud"
	// EchoRef is the image the e2e tests run their echo pods from.
	EchoRef = "example.com/echo:1"
	// CoreDNSRef is the test bed's cluster DNS; its tag is the version
	// hack/coredns/go.mod pins.
	CoreDNSRef = "registry.k8s.io/coredns/coredns:v1.15.0"
)

// defaultPath is every image's PATH.
const defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Inputs is what the images are made of.
type Inputs struct {
	// BinDir holds lb-controller, node-agent, localcloud, agnhost, pause,
	// dlb-echo and, optionally, directlb-cni and coredns.
	BinDir string
	// CNI and CoreDNS say whether BinDir/directlb-cni and BinDir/coredns
	// exist.
	CNI, CoreDNS bool
	// AppVersion is the chart's appVersion.
	AppVersion string
	// Agnhost, BusyBox and Pause are the references the pinned e2e
	// framework expects (k8s.io/kubernetes/test/utils/image/manifest.go).
	Agnhost, BusyBox, Pause string
	// Busybox is a static busybox on the host and Applets its applets
	// (`busybox --list`).
	Busybox string
	Applets []string
	// AgnhostTools are the agnhost image's host programs and their
	// libraries (HostTool).
	AgnhostTools []images.Entry
	// PorterDir holds agnhost porter's localhost.crt and localhost.key,
	// which upstream's image has at /; empty leaves them out.
	PorterDir string
}

// Named is an image and the base name of its archive, <Name>.oci.tar.
type Named struct {
	Name  string
	Image images.Image
}

// Images returns the images the test bed needs.
func Images(in Inputs) []Named {
	bin := func(name string) string { return filepath.Join(in.BinDir, name) }
	app := func(repo string) string { return repo + ":" + in.AppVersion }
	tmp := images.Dir("/tmp", 0o777|fs.ModeSticky)
	command := func(name string) images.Entry {
		return images.File("/usr/local/bin/"+name, bin(name), 0o755)
	}
	config := func(entrypoint ...string) ocispec.ImageConfig {
		return ocispec.ImageConfig{Entrypoint: entrypoint, Env: []string{defaultPath}}
	}

	controller := config("/usr/local/bin/lb-controller")
	controller.User = "65532:65532" // the chart's runAsUser; distroless' nonroot
	agent := []images.Entry{command("node-agent"), tmp}
	if in.CNI {
		agent = append(agent, command("directlb-cni"))
	}

	agnhost := config("/agnhost")
	agnhost.Cmd = []string{"pause"}
	// The users and groups of upstream's agnhost image that e2e tests
	// look for (SupplementalGroups with a group defined in the image).
	agnhostUsers := passwd{
		users:  "user-defined-in-image:x:1000:1000::/home/user-defined-in-image:/bin/sh\n",
		groups: "user-defined-in-image:x:1000:\ngroup-defined-in-image:x:50000:user-defined-in-image\n",
	}

	agnhostExtra := slices.Clone(in.AgnhostTools)
	if in.PorterDir != "" {
		agnhostExtra = append(agnhostExtra,
			images.File("/localhost.crt", filepath.Join(in.PorterDir, "localhost.crt"), 0o644),
			images.File("/localhost.key", filepath.Join(in.PorterDir, "localhost.key"), 0o644))
	}
	if in.CoreDNS {
		// Upstream's image has CoreDNS at /coredns for some DNS tests.
		agnhostExtra = append(agnhostExtra, images.File("/coredns", bin("coredns"), 0o755))
	}

	busybox := config()
	busybox.Entrypoint = nil
	busybox.Cmd = []string{"sh"}

	pause := config("/pause")
	pause.User = "65535:65535" // as upstream's pause image

	echo := config("/dlb-echo")
	// The image says the ports the tests use; a pod that needs others sets
	// ECHO_TCP_PORTS / ECHO_UDP_PORTS.
	echo.Env = append(echo.Env, "ECHO_TCP_PORTS=8080", "ECHO_UDP_PORTS=9090")

	coredns := config("/coredns")
	coredns.User = "65532:65532" // as upstream's image (distroless nonroot)
	named := []Named{
		{"lb-controller", images.Image{Ref: app(LBControllerRepo), Config: controller,
			Entries: []images.Entry{command("lb-controller"), tmp}}},
		{"node-agent", images.Image{Ref: app(NodeAgentRepo), Config: config("/usr/local/bin/node-agent"),
			Entries: agent}},
		{"localcloud", images.Image{Ref: app(LocalcloudRepo), Config: config("/usr/local/bin/localcloud"),
			Entries: []images.Entry{command("localcloud"), tmp}}},
		{"agnhost", images.Image{Ref: in.Agnhost, Config: agnhost,
			Entries: append(append(in.shell(agnhostUsers, commandNames(in.AgnhostTools)),
				images.File("/agnhost", bin("agnhost"), 0o755),
				// Upstream's entrypoint tests override the entrypoint with agnhost-2.
				images.Symlink("/agnhost-2", "agnhost"),
				images.Dir("/uploads", 0o755), // netexec's upload directory
				tmp), agnhostExtra...)}},
		{"busybox", images.Image{Ref: in.BusyBox, Config: busybox,
			Entries: append(in.shell(passwd{}, nil), tmp)}},
		{"pause", images.Image{Ref: in.Pause, Config: pause,
			Entries: []images.Entry{images.File("/pause", bin("pause"), 0o755)}}},
		{"echo", images.Image{Ref: EchoRef, Config: echo,
			Entries: append(in.shell(passwd{}, nil), images.File("/dlb-echo", bin("dlb-echo"), 0o755), tmp)}},
	}
	if in.CoreDNS {
		named = append(named, Named{"coredns", images.Image{Ref: CoreDNSRef, Config: coredns,
			Entries: []images.Entry{images.File("/coredns", bin("coredns"), 0o755), tmp}}})
	}
	return named
}

// passwd is what an image adds to the root and nobody entries of
// /etc/passwd and /etc/group.
type passwd struct{ users, groups string }

// shell is a static busybox at /bin/busybox with its applets linked in
// /bin, so that `sh -c`, exec probes and preStop hooks work, plus
// /etc/passwd and /etc/group. Applets named in replaced are left out: the
// image has the real program (Debian's busybox-static runs its own applet
// for any command name its sh is given, whatever PATH says, so an image
// with a host tool of that name gets the host's sh too).
func (in Inputs) shell(extra passwd, replaced map[string]bool) []images.Entry {
	out := []images.Entry{
		images.File("/bin/busybox", in.Busybox, 0o755),
		images.Content("/etc/passwd", []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"+extra.users), 0o644),
		images.Content("/etc/group", []byte("root:x:0:\nnobody:x:65534:\n"+extra.groups), 0o644),
		images.Dir("/root", 0o700),
	}
	for _, a := range in.Applets {
		if a == "busybox" || a == "" || filepath.Base(a) != a || replaced[a] {
			continue
		}
		out = append(out, images.Symlink("/bin/"+a, "busybox"))
	}
	return out
}

// commandNames are the names of the entries in /bin and /usr/bin.
func commandNames(entries []images.Entry) map[string]bool {
	names := map[string]bool{}
	for _, e := range entries {
		if d := filepath.Dir(e.Path); d == "/bin" || d == "/usr/bin" {
			names[filepath.Base(e.Path)] = true
		}
	}
	return names
}
