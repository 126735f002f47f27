package namedns

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// Covered lists the namespace mounts under Dir that a later mount of Dir
// itself hides: they sit on a lower layer (the plain directory, or an older
// bind of it), so their files can be neither unmounted nor removed by path.
func Covered() ([]string, error) {
	ms, err := mounts()
	if err != nil {
		return nil, err
	}
	_, covered := layers(ms)
	return covered, nil
}

// Repair brings Dir back to iproute2's shape when namespace mounts are
// covered: it keeps a file descriptor on every namespace that is reachable
// by name, detaches every layer mounted on Dir, unmounts and removes what
// was underneath, makes Dir a shared mount again and re-mounts the kept
// namespaces under their names. Covered namespaces lose their names (they
// could not be reached by them anyway); no reachable name is lost. When
// nothing is covered it does nothing.
func Repair() error {
	unlock, err := lock()
	if err != nil {
		return err
	}
	defer unlock()
	return repairLocked()
}

// repairLocked is Repair for a caller that holds the lock.
func repairLocked() error {
	ms, err := mounts()
	if err != nil {
		return err
	}
	visible, covered := layers(ms)
	if len(covered) == 0 {
		return nil
	}
	kept := map[string]*os.File{}
	defer func() {
		for _, f := range kept {
			f.Close()
		}
	}()
	for _, name := range visible {
		f, err := os.Open(Path(name))
		if err != nil {
			return fmt.Errorf("repair %s: keep %s: %w", Dir, name, err)
		}
		kept[name] = f
	}
	if err := unmountAll(Dir); err != nil {
		return fmt.Errorf("repair %s: %w", Dir, err)
	}
	ents, err := os.ReadDir(Dir)
	if err != nil {
		return fmt.Errorf("repair %s: %w", Dir, err)
	}
	var errs []error
	for _, e := range ents {
		p := Path(e.Name())
		if err := unmountAll(p); err != nil {
			errs = append(errs, err)
			continue
		}
		if err := os.Remove(p); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", p, err))
		}
	}
	if err := makeShared(); err != nil {
		errs = append(errs, err)
	}
	for name, f := range kept {
		p := Path(name)
		nf, err := os.OpenFile(p, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0)
		if err != nil {
			errs = append(errs, fmt.Errorf("restore %s: %w", name, err))
			continue
		}
		nf.Close()
		src := fmt.Sprintf("/proc/self/fd/%d", f.Fd())
		if err := unix.Mount(src, p, "none", unix.MS_BIND, ""); err != nil {
			_ = os.Remove(p)
			errs = append(errs, fmt.Errorf("restore %s: %w", name, err))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("repair %s: %w", Dir, errors.Join(errs...))
	}
	return nil
}

// unmountAll detaches every mount stacked on path until none is left.
func unmountAll(path string) error {
	for range 64 {
		err := unix.Unmount(path, unix.MNT_DETACH)
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("unmount %s: %w", path, err)
		}
	}
	return fmt.Errorf("unmount %s: still a mount point after 64 unmounts", path)
}

// layers splits the namespace mounts directly under Dir into the names
// reachable through the mount Dir resolves to now and the names of mounts
// on a lower layer of that same path: an older mount of Dir below it, or
// the plain directory under the whole stack. Mounts in a tree this mount
// namespace cannot reach any more (under a later mount of a parent, such as
// a fresh tmpfs on /run) are neither. A namespace mounted twice on one file
// is stacked, not covered: unmountAll handles it.
func layers(ms []*mountinfo.Info) (visible, covered []string) {
	topID, err := mountID(Dir)
	if err != nil {
		return nil, nil // no Dir: nothing is mounted in it
	}
	byID := map[int]*mountinfo.Info{}
	for _, m := range ms {
		byID[m.ID] = m
	}
	top, ok := byID[topID]
	if !ok || top.Mountpoint != Dir {
		return nil, nil // Dir is a plain directory: nothing covers anything
	}
	lower := map[int]bool{} // older layers of Dir and the plain directory's mount
	for c := top; ; {
		p, ok := byID[c.Parent]
		if !ok {
			break
		}
		lower[p.ID] = true
		if p.Mountpoint != Dir {
			break
		}
		c = p
	}
	for _, m := range ms {
		if m.Mountpoint == Dir || filepath.Dir(m.Mountpoint) != Dir {
			continue
		}
		if p, ok := byID[m.Parent]; ok && p.Mountpoint == m.Mountpoint {
			continue // stacked on the same file
		}
		name := filepath.Base(m.Mountpoint)
		switch {
		case m.Parent == top.ID:
			visible = append(visible, name)
		case lower[m.Parent]:
			covered = append(covered, name)
		}
	}
	return visible, covered
}

// mountID is the ID of the mount path resolves to (fdinfo's mnt_id).
func mountID(path string) (int, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/self/fdinfo/%d", f.Fd()))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "mnt_id:"); ok {
			return strconv.Atoi(strings.TrimSpace(v))
		}
	}
	return 0, fmt.Errorf("no mnt_id for %s", path)
}

func mounts() ([]*mountinfo.Info, error) {
	ms, err := mountinfo.GetMounts(nil)
	if err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	return ms, nil
}
