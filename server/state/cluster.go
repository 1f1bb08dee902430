package state

import (
	"github.com/hashicorp/go-memdb"

	"github.com/corral-dev/corral/structs"
)

// The cluster's own security material (server/autotls.go): one row of
// secrets (the cluster CA, the join secret, the gossip key) and the node
// certificates the CA signed, with their revocation. Both tables are in
// raft snapshots (Dump).
const (
	tableSecrets = "secrets"
	tableCerts   = "certs"
	secretsID    = "cluster"
)

// secretsRow is the one row of the secrets table.
type secretsRow struct {
	ID      string
	Secrets *structs.ClusterSecrets
}

func clusterTables() map[string]*memdb.TableSchema {
	return map[string]*memdb.TableSchema{
		tableSecrets: simpleTable(tableSecrets, "ID"),
		tableCerts: {Name: tableCerts, Indexes: map[string]*memdb.IndexSchema{
			"id":   {Name: "id", Unique: true, Indexer: &memdb.StringFieldIndex{Field: "Serial"}},
			"node": {Name: "node", Indexer: &memdb.StringFieldIndex{Field: "Node"}},
		}},
	}
}

// ClusterSecrets returns the cluster's secrets, nil before the first
// leader recorded them (and in clusters with their own PKI).
func (sn *Snapshot) ClusterSecrets() (*structs.ClusterSecrets, error) {
	raw, err := sn.txn.First(tableSecrets, "id", secretsID)
	if err != nil || raw == nil {
		return nil, err
	}
	return raw.(*secretsRow).Secrets, nil
}

// IssuedCert returns the record of a certificate by serial (hex), nil if
// the cluster CA did not sign it. ws, when set, watches the record.
func (sn *Snapshot) IssuedCert(ws memdb.WatchSet, serial string) (*structs.IssuedCert, error) {
	ch, raw, err := sn.txn.FirstWatch(tableCerts, "id", serial)
	if err != nil {
		return nil, err
	}
	if ws != nil {
		ws.Add(ch)
	}
	if raw == nil {
		return nil, nil
	}
	return raw.(*structs.IssuedCert), nil
}

// IssuedCerts lists the certificates issued to a node name or agent ID
// (every certificate when node is "").
func (sn *Snapshot) IssuedCerts(node string) ([]*structs.IssuedCert, error) {
	all, err := listAll[*structs.IssuedCert](sn.txn, tableCerts)
	if err != nil || node == "" {
		return all, err
	}
	var out []*structs.IssuedCert
	for _, c := range all {
		if c.Node == node || c.AgentID == node {
			out = append(out, c)
		}
	}
	return out, nil
}

// SetClusterSecrets records the cluster's secrets once: when some are
// recorded already it changes nothing and returns false.
func (s *StateStore) SetClusterSecrets(index uint64, req *structs.ClusterSecretsRequest) (bool, error) {
	w := s.write(index)
	raw, err := w.txn.First(tableSecrets, "id", secretsID)
	if err != nil || raw != nil || req.Secrets == nil {
		w.txn.Abort()
		return false, err
	}
	if err := w.txn.Insert(tableSecrets, &secretsRow{ID: secretsID, Secrets: req.Secrets}); err != nil {
		w.txn.Abort()
		return false, err
	}
	w.dirty[tableSecrets] = true
	return true, w.commit()
}

// IssueCert records a certificate the cluster CA signed.
func (s *StateStore) IssueCert(index uint64, req *structs.CertIssueRequest) error {
	if req.Cert == nil || req.Cert.Serial == "" {
		return nil
	}
	w := s.write(index)
	c := *req.Cert
	if err := w.txn.Insert(tableCerts, &c); err != nil {
		w.txn.Abort()
		return err
	}
	w.dirty[tableCerts] = true
	return w.commit()
}

// RevokeCerts marks certificates revoked; serials the CA did not sign are
// recorded too (a certificate of one's own PKI can be revoked as well).
func (s *StateStore) RevokeCerts(index uint64, req *structs.CertRevokeRequest) error {
	w := s.write(index)
	for _, serial := range req.Serials {
		raw, err := w.txn.First(tableCerts, "id", serial)
		if err != nil {
			w.txn.Abort()
			return err
		}
		c := &structs.IssuedCert{Serial: serial}
		if raw != nil {
			c = new(structs.IssuedCert)
			*c = *raw.(*structs.IssuedCert)
		}
		if c.Revoked {
			continue
		}
		c.Revoked, c.RevokedAt = true, req.Time
		if err := w.txn.Insert(tableCerts, c); err != nil {
			w.txn.Abort()
			return err
		}
		w.dirty[tableCerts] = true
	}
	return w.commit()
}
