package ipam

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// Store is the pool's directory: pool.json, written whole (temporary file,
// fsync, rename) so a crash leaves the old or the new pool, and pool.lock,
// the flock every operation holds while it reads, changes and writes the
// pool.
type Store struct {
	Dir string
}

const (
	poolFile = "pool.json"
	lockFile = "pool.lock"
	// lockPoll is how often a waiting Lock tries again.
	lockPoll = 5 * time.Millisecond
)

// Path is the pool file.
func (s Store) Path() string { return filepath.Join(s.Dir, poolFile) }

// Lock takes the pool's lock, waiting until ctx ends; the returned func
// lets it go.
func (s Store) Lock(ctx context.Context) (func(), error) {
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("create pool directory: %w", err)
	}
	name := filepath.Join(s.Dir, lockFile)
	f, err := os.OpenFile(name, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open pool lock: %w", err)
	}
	t := time.NewTicker(lockPoll)
	defer t.Stop()
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", name, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", name, ctx.Err())
		case <-t.C:
		}
	}
}

// Load reads the pool; a missing file is an empty pool.
func (s Store) Load() (*Pool, error) {
	b, err := os.ReadFile(s.Path())
	if errors.Is(err, os.ErrNotExist) {
		return &Pool{Version: PoolVersion}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read pool: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var p Pool
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("decode pool %s: %w", s.Path(), err)
	}
	if p.Version != PoolVersion {
		return nil, fmt.Errorf("pool %s: version %d, this plugin reads %d", s.Path(), p.Version, PoolVersion)
	}
	return &p, nil
}

// Save writes the pool whole.
func (s Store) Save(p *Pool) error {
	b, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		return fmt.Errorf("encode pool: %w", err)
	}
	tmp, err := os.CreateTemp(s.Dir, poolFile+".tmp-*")
	if err != nil {
		return fmt.Errorf("write pool: %w", err)
	}
	defer os.Remove(tmp.Name()) // after the rename, a no-op
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("write pool: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write pool: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write pool: %w", err)
	}
	if err := os.Rename(tmp.Name(), s.Path()); err != nil {
		return fmt.Errorf("write pool: %w", err)
	}
	if d, err := os.Open(s.Dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}
