package namedns

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

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
// reachable through the topmost mount of Dir and the names of mounts on a
// lower layer. With no mount on Dir, nothing can be covered. A namespace
// mounted twice on one file is stacked, not covered: unmountAll handles it.
func layers(ms []*mountinfo.Info) (visible, covered []string) {
	byID := map[int]*mountinfo.Info{}
	var top *mountinfo.Info
	for _, m := range ms {
		byID[m.ID] = m
	}
	for _, m := range ms { // the bottom layer: its parent is not on Dir
		if p, ok := byID[m.Parent]; m.Mountpoint == Dir && (!ok || p.Mountpoint != Dir) {
			top = m
		}
	}
	for climbed := top != nil; climbed; { // each higher layer has the one below as parent
		climbed = false
		for _, m := range ms {
			if m.Mountpoint == Dir && m.Parent == top.ID {
				top, climbed = m, true
			}
		}
	}
	if top == nil {
		return nil, nil
	}
	for _, m := range ms {
		if m.Mountpoint == Dir || filepath.Dir(m.Mountpoint) != Dir {
			continue
		}
		if p, ok := byID[m.Parent]; ok && p.Mountpoint == m.Mountpoint {
			continue // stacked on the same file
		}
		name := filepath.Base(m.Mountpoint)
		if m.Parent == top.ID {
			visible = append(visible, name)
		} else {
			covered = append(covered, name)
		}
	}
	return visible, covered
}

func mounts() ([]*mountinfo.Info, error) {
	ms, err := mountinfo.GetMounts(nil)
	if err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	return ms, nil
}
