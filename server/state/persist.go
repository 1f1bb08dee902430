package state

import (
	"fmt"

	"github.com/hashicorp/go-memdb"

	"github.com/corral-dev/corral/structs"
)

// Dump is the whole state in a form that raft snapshots persist.
type Dump struct {
	Index    map[string]uint64         `json:"index"`
	Sessions []*structs.Session        `json:"sessions"`
	Kernels  []*structs.Kernel         `json:"kernels"`
	Agents   []*structs.Agent          `json:"agents"`
	Users    []*structs.User           `json:"users,omitempty"`
	Keys     []*structs.AccessKey      `json:"keys,omitempty"`
	Policies []*structs.ResourcePolicy `json:"policies,omitempty"`
	Groups   []*structs.ResourceGroup  `json:"groups,omitempty"`
	Usage    []*structs.KeyUsage       `json:"usage,omitempty"`
	Networks []*structs.Network        `json:"networks,omitempty"`
	// Idempotency holds the idempotency keys of creates (idempotency.go).
	Idempotency []*IdempotencyEntry `json:"idempotency,omitempty"`
	// Secrets are the cluster CA, join secret and gossip key; Certs the
	// node certificates the CA signed and their revocation (cluster.go).
	Secrets *structs.ClusterSecrets `json:"secrets,omitempty"`
	Certs   []*structs.IssuedCert   `json:"certs,omitempty"`
	// Endpoints are the inference endpoints (endpoints.go).
	Endpoints []*structs.Endpoint `json:"endpoints,omitempty"`
	// Volumes and SSHKeys are users' volumes and SSH keys (volumes.go).
	Volumes []*structs.Volume      `json:"volumes,omitempty"`
	SSHKeys []*structs.UserSSHKeys `json:"ssh_keys,omitempty"`
	// Templates are the session templates (templates.go).
	Templates []*structs.Template `json:"templates,omitempty"`
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
	for _, t := range []string{tableUsers, tableKeys, tablePolicies, tableGroups, tableUsage, tableNetworks, networkCursor, tableIdempotency, tableSecrets, tableCerts, tableEndpoints, tableVolumes, tableSSHKeys, tableTemplates} {
		d.Index[t] = sn.Index(t)
	}
	if d.Networks, err = sn.Networks(); err != nil {
		return nil, err
	}
	if d.Users, err = sn.Users(); err != nil {
		return nil, err
	}
	if d.Keys, err = sn.Keys(); err != nil {
		return nil, err
	}
	if d.Policies, err = sn.Policies(); err != nil {
		return nil, err
	}
	if d.Groups, err = sn.Groups(); err != nil {
		return nil, err
	}
	if d.Usage, err = sn.AllUsage(); err != nil {
		return nil, err
	}
	if d.Idempotency, err = sn.IdempotencyEntries(); err != nil {
		return nil, err
	}
	if d.Secrets, err = sn.ClusterSecrets(); err != nil {
		return nil, err
	}
	if d.Certs, err = sn.IssuedCerts(""); err != nil {
		return nil, err
	}
	if d.Endpoints, err = sn.Endpoints(); err != nil {
		return nil, err
	}
	if d.Volumes, err = sn.Volumes(); err != nil {
		return nil, err
	}
	if d.SSHKeys, err = sn.allSSHKeys(); err != nil {
		return nil, err
	}
	if d.Templates, err = sn.Templates(); err != nil {
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
	for _, set := range []struct {
		table string
		objs  []any
	}{
		{tableUsers, anySlice(d.Users)}, {tableKeys, anySlice(d.Keys)}, {tablePolicies, anySlice(d.Policies)},
		{tableGroups, anySlice(d.Groups)}, {tableUsage, anySlice(d.Usage)}, {tableNetworks, anySlice(d.Networks)},
		{tableIdempotency, anySlice(d.Idempotency)}, {tableCerts, anySlice(d.Certs)},
		{tableEndpoints, anySlice(d.Endpoints)},
		{tableVolumes, anySlice(d.Volumes)}, {tableSSHKeys, anySlice(d.SSHKeys)},
		{tableTemplates, anySlice(d.Templates)},
	} {
		for _, o := range set.objs {
			if err := txn.Insert(set.table, o); err != nil {
				return fmt.Errorf("restore %s: %w", set.table, err)
			}
		}
	}
	if d.Secrets != nil {
		if err := txn.Insert(tableSecrets, &secretsRow{ID: secretsID, Secrets: d.Secrets}); err != nil {
			return fmt.Errorf("restore secrets: %w", err)
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

func anySlice[T any](in []T) []any {
	out := make([]any, len(in))
	for i, v := range in {
		out[i] = v
	}
	return out
}
