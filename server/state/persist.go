package state

import (
	"fmt"

	"github.com/hashicorp/go-memdb"

	"github.com/corral-dev/corral/structs"
)

// Dump is the whole state in a form that raft snapshots persist.
type Dump struct {
	Index    map[string]uint64  `json:"index"`
	Sessions []*structs.Session `json:"sessions"`
	Kernels  []*structs.Kernel  `json:"kernels"`
	Agents   []*structs.Agent   `json:"agents"`
}

// Dump copies everything out of the snapshot.
func (sn *Snapshot) Dump() (*Dump, error) {
	d := &Dump{Index: map[string]uint64{}}
	for _, t := range []string{tableSessions, tableKernels, tableAgents} {
		d.Index[t] = sn.Index(t)
	}
	var err error
	if d.Sessions, err = sn.Sessions(nil, ""); err != nil {
		return nil, err
	}
	if d.Kernels, err = sn.Kernels(); err != nil {
		return nil, err
	}
	if d.Agents, err = sn.Agents(nil); err != nil {
		return nil, err
	}
	return d, nil
}

// Restore replaces the whole state with a dump and wakes every watcher of
// the old state through AbandonCh.
func (s *StateStore) Restore(d *Dump) error {
	db, err := memdb.NewMemDB(schema())
	if err != nil {
		return err
	}
	txn := db.Txn(true)
	defer txn.Abort()
	for _, x := range d.Sessions {
		if err := txn.Insert(tableSessions, x); err != nil {
			return fmt.Errorf("restore session %s: %w", x.ID, err)
		}
	}
	for _, x := range d.Kernels {
		if err := txn.Insert(tableKernels, x); err != nil {
			return fmt.Errorf("restore kernel %s: %w", x.ID, err)
		}
	}
	for _, x := range d.Agents {
		if err := txn.Insert(tableAgents, x); err != nil {
			return fmt.Errorf("restore agent %s: %w", x.ID, err)
		}
	}
	for k, v := range d.Index {
		if err := txn.Insert(tableIndex, &indexEntry{Key: k, Value: v}); err != nil {
			return err
		}
	}
	txn.Commit()
	s.mu.Lock()
	s.db.Store(db)
	close(s.abandon)
	s.abandon = make(chan struct{})
	s.mu.Unlock()
	return nil
}
