package namedns

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"sync"
	"syscall"
	"testing"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/directlb/directlb/internal/privileged"
)

// freshEnv marks the copy of the test binary that runs in its own mount
// namespace.
const freshEnv = "DLB_NAMEDNS_FRESH_MOUNTS"

// TestMain runs this package's tests, as root, in a private mount namespace
// with an empty tmpfs on /run: /run/netns is then absent, as on a machine
// that has never run `ip netns add`, whatever this machine has seen; and
// nothing the tests mount reaches the host's mount table. A namespace
// mounted under an earlier /run stays in the mount table, hidden.
func TestMain(m *testing.M) {
	if !privileged.Root() {
		os.Exit(m.Run()) // the tests skip, saying why
	}
	if os.Getenv(freshEnv) == "" {
		cmd := exec.Command(os.Args[0], os.Args[1:]...)
		cmd.Env = append(os.Environ(), freshEnv+"=1")
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		// Go makes / recursively private in the child when it unshares the
		// mount namespace.
		cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: unix.CLONE_NEWNS}
		if err := cmd.Run(); err != nil {
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				os.Exit(ee.ExitCode())
			}
			fmt.Fprintln(os.Stderr, "run the tests in a private mount namespace:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	// A namespace mounted under a /run that a later mount hides, as in a CI
	// job whose parallel tests made namespaces before this package's fresh
	// /run: it is in mountinfo under /run/netns, but in no tree this mount
	// namespace reaches, so it is neither visible nor covered.
	for _, step := range []func() error{
		func() error { return unix.Mount("tmpfs", "/run", "tmpfs", 0, "mode=0755") },
		func() error { return Create("dlbt-hidden") },
		func() error { return unix.Mount("tmpfs", "/run", "tmpfs", 0, "mode=0755") },
	} {
		if err := step(); err != nil {
			fmt.Fprintln(os.Stderr, "fresh /run:", err)
			os.Exit(1)
		}
	}
	os.Exit(m.Run())
}

func needRoot(t *testing.T) {
	t.Helper()
	privileged.Require(t, "mounts network namespaces under /run/netns")
	privileged.RequireTools(t, "the test mixes iproute2's ip with this package", "ip")
}

// reset puts /run/netns back to a fresh machine's state: absent.
func reset(t *testing.T) {
	t.Helper()
	if err := unmountAll(Dir); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(Dir)
	for _, e := range ents {
		if err := unmountAll(Path(e.Name())); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.RemoveAll(Dir); err != nil {
		t.Fatal(err)
	}
}

func ip(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %v: %v: %s", args, err, out)
	}
}

func listAll(t *testing.T) []string {
	t.Helper()
	names, err := List("")
	if err != nil {
		t.Fatal(err)
	}
	return names
}

func checkNotCovered(t *testing.T) {
	t.Helper()
	c, err := Covered()
	if err != nil {
		t.Fatal(err)
	}
	if len(c) > 0 {
		t.Fatalf("covered namespace mounts: %v", c)
	}
}

// The order that failed on a fresh machine: a namespace made from Go while
// /run/netns is a plain directory, then `ip netns add` from another process,
// then delete. And the other order.
func TestMixWithIPNetns(t *testing.T) {
	needRoot(t)
	for _, goFirst := range []bool{true, false} {
		t.Run(fmt.Sprintf("goFirst=%v", goFirst), func(t *testing.T) {
			reset(t)
			if goFirst {
				if err := Create("dlbt-go"); err != nil {
					t.Fatal(err)
				}
				ip(t, "netns", "add", "dlbt-ip")
			} else {
				ip(t, "netns", "add", "dlbt-ip")
				if err := Create("dlbt-go"); err != nil {
					t.Fatal(err)
				}
			}
			if got, want := listAll(t), []string{"dlbt-go", "dlbt-ip"}; !slices.Equal(got, want) {
				t.Fatalf("names: got %v, want %v", got, want)
			}
			checkNotCovered(t)
			// Both are usable from both sides.
			ip(t, "netns", "exec", "dlbt-go", "true")
			if err := Do("dlbt-ip", func() error { return nil }); err != nil {
				t.Fatal(err)
			}
			if err := Delete("dlbt-go"); err != nil {
				t.Fatal(err)
			}
			ip(t, "netns", "del", "dlbt-ip")
			if got := listAll(t); len(got) != 0 {
				t.Fatalf("left: %v", got)
			}
		})
	}
}

// Go and `ip netns` at once from parallel processes and goroutines, each a
// bounded number of times.
func TestParallelWithIPNetns(t *testing.T) {
	needRoot(t)
	reset(t)
	const workers, rounds = 4, 10
	var wg sync.WaitGroup
	errs := make(chan error, 2*workers*rounds)
	for w := range workers {
		wg.Add(2)
		go func() {
			defer wg.Done()
			for r := range rounds {
				name := fmt.Sprintf("dlbt-go-%d-%d", w, r)
				if err := Create(name); err != nil {
					errs <- err
					continue
				}
				if err := Delete(name); err != nil {
					errs <- err
				}
			}
		}()
		go func() {
			defer wg.Done()
			for r := range rounds {
				name := fmt.Sprintf("dlbt-ip-%d-%d", w, r)
				for _, args := range [][]string{{"netns", "add", name}, {"netns", "del", name}} {
					if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
						errs <- fmt.Errorf("ip %v: %w: %s", args, err, out)
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	checkNotCovered(t)
	if got := listAll(t); len(got) != 0 {
		t.Fatalf("left: %v", got)
	}
}

// The state the old code left on a fresh machine, built the way it was
// built (vishvananda's NewNamed on a plain /run/netns, then `ip netns add`):
// Delete repairs it, and the namespace `ip` made keeps its name.
func TestDeleteRepairsCoveredMounts(t *testing.T) {
	needRoot(t)
	reset(t)
	if err := onThread(func() error {
		ns, err := netns.NewNamed("dlbt-old")
		if err == nil {
			ns.Close()
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	ip(t, "netns", "add", "dlbt-ip")
	if c, err := Covered(); err != nil || !slices.Equal(c, []string{"dlbt-old"}) {
		t.Fatalf("covered: got %v, %v; want [dlbt-old] (the failure was not reproduced)", c, err)
	}
	_ = unix.Unmount(Path("dlbt-old"), unix.MNT_DETACH)
	if err := os.Remove(Path("dlbt-old")); !errors.Is(err, unix.EBUSY) {
		t.Fatalf("remove a covered namespace file: got %v, want EBUSY (the failure was not reproduced)", err)
	}

	if err := Delete("dlbt-old"); err != nil {
		t.Fatal(err)
	}
	checkNotCovered(t)
	if got, want := listAll(t), []string{"dlbt-ip"}; !slices.Equal(got, want) {
		t.Fatalf("names after repair: got %v, want %v", got, want)
	}
	ip(t, "netns", "exec", "dlbt-ip", "true")
	ip(t, "netns", "del", "dlbt-ip")
	if got := listAll(t); len(got) != 0 {
		t.Fatalf("left: %v", got)
	}
}

func TestEnsureAndCreate(t *testing.T) {
	needRoot(t)
	reset(t)
	if err := Ensure("dlbt-e"); err != nil {
		t.Fatal(err)
	}
	if err := Ensure("dlbt-e"); err != nil {
		t.Fatalf("second Ensure: %v", err)
	}
	if err := Create("dlbt-e"); !errors.Is(err, os.ErrExist) {
		t.Fatalf("Create of a taken name: got %v, want ErrExist", err)
	}
	// A file with no namespace on it (a crash between create and mount).
	if err := Delete("dlbt-e"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(Path("dlbt-e"), nil, 0); err != nil {
		t.Fatal(err)
	}
	if err := Ensure("dlbt-e"); err != nil {
		t.Fatalf("Ensure over an empty file: %v", err)
	}
	h, err := Handle("dlbt-e")
	if err != nil {
		t.Fatal(err)
	}
	h.Close()
	if err := Replace("dlbt-e"); err != nil {
		t.Fatal(err)
	}
	if err := Delete("dlbt-e"); err != nil {
		t.Fatal(err)
	}
	if err := Delete("dlbt-e"); err != nil {
		t.Fatalf("Delete of a missing name: %v", err)
	}
	if err := Create("../x"); err == nil {
		t.Fatal("Create accepted a name with a slash")
	}
}
