package raftlog

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"github.com/hashicorp/raft"
)

// Stable is raft's stable store (the current term and the vote): a small
// JSON file replaced atomically (written aside, synced, renamed, the
// directory synced) on every change, which raft makes only at elections.
type Stable struct {
	path   string
	noSync bool

	mu   sync.Mutex
	vals map[string][]byte
}

var _ raft.StableStore = (*Stable)(nil)

// errNotFound is what raft expects for a key never set: its message.
var errNotFound = errors.New("not found")

// OpenStable opens (or starts) the stable store in path.
func OpenStable(path string, noSync bool) (*Stable, error) {
	s := &Stable{path: path, noSync: noSync, vals: map[string][]byte{}}
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return s, nil
	case err != nil:
		return nil, err
	}
	if err := json.Unmarshal(b, &s.vals); err != nil {
		return nil, fmt.Errorf("raft stable store %s: %w", path, err)
	}
	return s, nil
}

// Set stores val under key.
func (s *Stable) Set(key, val []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	next := make(map[string][]byte, len(s.vals)+1)
	for k, v := range s.vals {
		next[k] = v
	}
	next[string(key)] = append([]byte(nil), val...)
	if err := s.write(next); err != nil {
		return err
	}
	s.vals = next
	return nil
}

// Get returns the value of key; a key never set is an error whose message
// is "not found", as raft expects.
func (s *Stable) Get(key []byte) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.vals[string(key)]
	if !ok {
		return nil, errNotFound
	}
	return append([]byte(nil), v...), nil
}

// SetUint64 stores val under key.
func (s *Stable) SetUint64(key []byte, val uint64) error {
	return s.Set(key, binary.BigEndian.AppendUint64(nil, val))
}

// GetUint64 returns the value of key, 0 when never set.
func (s *Stable) GetUint64(key []byte) (uint64, error) {
	v, err := s.Get(key)
	if errors.Is(err, errNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	if len(v) != 8 {
		return 0, fmt.Errorf("raft stable store: %q is not a uint64", key)
	}
	return binary.BigEndian.Uint64(v), nil
}

func (s *Stable) write(vals map[string][]byte) error {
	b, err := json.Marshal(vals)
	if err != nil {
		return err
	}
	tmp := s.path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil && !s.noSync {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, s.path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("raft stable store: %w", err)
	}
	if s.noSync {
		return nil
	}
	d, err := os.Open(filepath.Dir(s.path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
