package state

import (
	"fmt"

	"github.com/hashicorp/go-memdb"

	"github.com/corral-dev/corral/structs"
)

// tableEndpoints holds the inference endpoints (structs.Endpoint); their
// replicas are sessions found through the sessions' "endpoint" index.
const tableEndpoints = "endpoints"

func endpointName(e *structs.Endpoint) string   { return e.Name }
func sessionEndpoint(s *structs.Session) string { return s.Endpoint }

func endpointTable() *memdb.TableSchema {
	return &memdb.TableSchema{Name: tableEndpoints, Indexes: map[string]*memdb.IndexSchema{
		"id": {Name: "id", Unique: true, Indexer: byField("Name", endpointName, false)},
	}}
}

// sessionsByEndpoint indexes the replica sessions of endpoints; other
// sessions have no entry.
func sessionsByEndpoint() *memdb.IndexSchema {
	return &memdb.IndexSchema{Name: "endpoint", AllowMissing: true, Indexer: byField("Endpoint", sessionEndpoint, true)}
}

// Endpoint returns one endpoint by name; ws, when set, watches it.
func (sn *Snapshot) Endpoint(ws memdb.WatchSet, name string) (*structs.Endpoint, error) {
	ch, raw, err := sn.txn.FirstWatch(tableEndpoints, "id", name)
	if err != nil {
		return nil, err
	}
	ws.Add(ch)
	if raw == nil {
		return nil, fmt.Errorf("no endpoint named %q: %w", name, ErrNotFound)
	}
	return raw.(*structs.Endpoint), nil
}

// Endpoints lists every endpoint by name.
func (sn *Snapshot) Endpoints() ([]*structs.Endpoint, error) {
	return listAll[*structs.Endpoint](sn.txn, tableEndpoints)
}

// EndpointReplicas lists the sessions (live and ended, until collected)
// that were replicas of the named endpoint, oldest first.
func (sn *Snapshot) EndpointReplicas(ws memdb.WatchSet, name string) ([]*structs.Session, error) {
	return watchedList[*structs.Session](sn.txn, ws, tableSessions, "endpoint", name)
}

// UpsertEndpoint creates or replaces an endpoint.
func (s *StateStore) UpsertEndpoint(index uint64, req *structs.EndpointUpsertRequest) error {
	if req.Endpoint == nil || req.Endpoint.Name == "" {
		return fmt.Errorf("endpoint upsert without an endpoint name")
	}
	w := s.write(index)
	defer w.txn.Abort()
	e := req.Endpoint.Copy()
	raw, err := w.txn.First(tableEndpoints, "id", e.Name)
	if err != nil {
		return err
	}
	var prev any
	if raw != nil {
		e.CreateIndex = raw.(*structs.Endpoint).CreateIndex
		prev = raw
	} else {
		e.CreateIndex = index
	}
	e.ModifyIndex = index
	if err := w.txn.Insert(tableEndpoints, e); err != nil {
		return err
	}
	w.dirty[tableEndpoints] = true
	w.deleted = append(w.deleted, Change{Table: tableEndpoints, Key: e.Name, Owner: e.Owner, Obj: e, Prev: prev})
	return w.commit()
}

// DeleteEndpoint removes an endpoint and ends its live replicas with the
// request's reason, in one apply.
func (s *StateStore) DeleteEndpoint(index uint64, req *structs.EndpointDeleteRequest) error {
	w := s.write(index)
	defer w.txn.Abort()
	raw, err := w.txn.First(tableEndpoints, "id", req.Name)
	if err != nil {
		return err
	}
	if raw == nil {
		return fmt.Errorf("no endpoint named %q: %w", req.Name, ErrNotFound)
	}
	if err := w.txn.Delete(tableEndpoints, raw); err != nil {
		return err
	}
	w.dirty[tableEndpoints] = true
	gone := raw.(*structs.Endpoint)
	w.deleted = append(w.deleted, Change{Table: tableEndpoints, Key: gone.Name, Owner: gone.Owner, Deleted: true, Obj: gone, Prev: gone})
	reps, err := (&Snapshot{txn: w.base}).EndpointReplicas(nil, req.Name)
	if err != nil {
		return err
	}
	reason := req.Reason
	if reason == "" {
		reason = fmt.Sprintf("endpoint %s deleted", req.Name)
	}
	for _, r := range reps {
		sn := w.snap()
		sess, err := sn.Session(nil, r.ID)
		if err != nil {
			return err
		}
		if sess.Status.Terminal() {
			continue
		}
		if err := w.endSession(sn, sess, reason, req.Time); err != nil {
			return err
		}
	}
	return w.commit()
}
