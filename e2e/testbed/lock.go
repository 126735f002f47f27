package testbed

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// LockFile serializes users of the test bed on this machine: its names are
// fixed, so two e2e runs (or an e2e run and 'up'/'down') at once would tear
// each other's bed down. It lives outside the state dir, which Down removes,
// and outside /run, which .ci/run replaces in its own mount namespace: the
// bed's names (host links, cgroups, ports) are machine-wide, so the lock
// must be too.
const LockFile = "/var/tmp/directlb-testbed.lock"

// ErrLocked is returned by Lock when another process holds the lock and
// the caller did not want to wait (or stopped waiting).
var ErrLocked = errors.New("the test bed is in use by another process")

// Lock takes the test bed's lock (an flock on LockFile). It waits until ctx
// ends, calling waiting once with the holder's pid if the lock is busy; with
// a nil waiting it does not wait at all. The returned func releases it.
func Lock(ctx context.Context, waiting func(holder string)) (unlock func(), err error) {
	f, err := os.OpenFile(LockFile, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", LockFile, err)
	}
	told := false
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", LockFile, err)
		}
		holder := lockHolder()
		if waiting == nil {
			f.Close()
			return nil, fmt.Errorf("%w (pid %s)", ErrLocked, holder)
		}
		if !told {
			waiting(holder)
			told = true
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("%w (pid %s): %w", ErrLocked, holder, context.Cause(ctx))
		case <-time.After(500 * time.Millisecond):
		}
	}
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return func() {
		_ = f.Truncate(0)
		_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
		f.Close()
	}, nil
}

func lockHolder() string {
	b, err := os.ReadFile(LockFile)
	if err != nil || len(strings.TrimSpace(string(b))) == 0 {
		return "unknown"
	}
	return strings.TrimSpace(string(b))
}
