// Package state is the servers' authoritative state: go-memdb tables of
// sessions, kernels and agents, changed only by the raft FSM through the
// apply methods of StateStore, read through consistent snapshots.
package state

import (
	"fmt"

	"github.com/hashicorp/go-memdb"

	"github.com/corral-dev/corral/structs"
)

// Table names.
const (
	tableSessions = "sessions"
	tableKernels  = "kernels"
	tableAgents   = "agents"
	tableIndex    = "index"
	tableUsers    = "users"
	tableKeys     = "keys"
	tablePolicies = "policies"
	tableGroups   = "groups"
	tableUsage    = "usage"
	tableNetworks = "networks"
)

// indexEntry records the raft index at which a table last changed.
type indexEntry struct {
	Key   string
	Value uint64
}

// pendingIndexer indexes the PENDING sessions only (by status, so the
// keys are "PENDING\x00" and the ID): the scheduler's queue. Sessions in
// any other status have no entry, so their status changes (SCHEDULED,
// RUNNING, TERMINATED...) write nothing to this index, and a placement
// only deletes; other statuses are listed by a scan of the table.
type pendingIndexer struct{}

func (pendingIndexer) FromObject(obj any) (bool, []byte, error) {
	s, ok := obj.(*structs.Session)
	if !ok {
		return false, nil, fmt.Errorf("unexpected type %T", obj)
	}
	if s.Status != structs.SessionPending {
		return false, nil, nil
	}
	b := make([]byte, 0, len(s.Status)+1+len(s.ID)+1)
	return true, append(append(b, s.Status...), 0), nil
}

func (pendingIndexer) FromArgs(args ...any) ([]byte, error) {
	if len(args) != 1 {
		return nil, fmt.Errorf("must provide one argument")
	}
	s, ok := args[0].(string)
	if !ok {
		return nil, fmt.Errorf("argument must be a string: %#v", args[0])
	}
	return []byte(s + "\x00"), nil
}

// fieldIndex indexes objects of type T by one string field, read by
// field instead of by reflection (memdb.StringFieldIndex's FromObject,
// with the same keys: the value and a NUL; an empty value is missing).
// Look-ups go through the embedded StringFieldIndex. spare is room left
// after the key, for the primary key memdb appends in a non-unique index.
type fieldIndex[T any] struct {
	memdb.StringFieldIndex
	field func(T) string
	spare int
}

func (ix *fieldIndex[T]) FromObject(obj any) (bool, []byte, error) {
	o, ok := obj.(T)
	if !ok {
		return false, nil, fmt.Errorf("field %s: unexpected type %T", ix.Field, obj)
	}
	v := ix.field(o)
	if v == "" {
		return false, nil, nil
	}
	b := make([]byte, len(v)+1, len(v)+1+ix.spare)
	copy(b, v)
	return true, b, nil
}

// byField is a fieldIndex named after its field; nonUnique leaves room
// for the primary key.
func byField[T any](field string, get func(T) string, nonUnique bool) *fieldIndex[T] {
	ix := &fieldIndex[T]{StringFieldIndex: memdb.StringFieldIndex{Field: field}, field: get}
	if nonUnique {
		ix.spare = 24
	}
	return ix
}

func sessionID(s *structs.Session) string   { return s.ID }
func sessionName(s *structs.Session) string { return s.Name }
func kernelID(k *structs.Kernel) string     { return k.ID }
func kernelAgent(k *structs.Kernel) string  { return k.AgentID }
func agentID(a *structs.Agent) string       { return a.ID }
func usageKey(u *structs.KeyUsage) string   { return u.AccessKey }
func indexEntryKey(e *indexEntry) string    { return e.Key }

func schema() *memdb.DBSchema {
	sc := &memdb.DBSchema{Tables: map[string]*memdb.TableSchema{
		tableSessions: {
			Name: tableSessions,
			Indexes: map[string]*memdb.IndexSchema{
				"id":      {Name: "id", Unique: true, Indexer: byField("ID", sessionID, false)},
				"name":    {Name: "name", AllowMissing: true, Indexer: byField("Name", sessionName, true)},
				"pending": {Name: "pending", AllowMissing: true, Indexer: pendingIndexer{}},
			},
		},
		tableKernels: {
			Name: tableKernels,
			Indexes: map[string]*memdb.IndexSchema{
				"id":    {Name: "id", Unique: true, Indexer: byField("ID", kernelID, false)},
				"agent": {Name: "agent", AllowMissing: true, Indexer: byField("AgentID", kernelAgent, true)},
			},
		},
		tableAgents: {
			Name: tableAgents,
			Indexes: map[string]*memdb.IndexSchema{
				"id": {Name: "id", Unique: true, Indexer: byField("ID", agentID, false)},
			},
		},
		tableUsers:    simpleTable(tableUsers, "Name"),
		tableKeys:     simpleTable(tableKeys, "AccessKey"),
		tablePolicies: simpleTable(tablePolicies, "Name"),
		tableGroups:   simpleTable(tableGroups, "Name"),
		tableUsage: {Name: tableUsage, Indexes: map[string]*memdb.IndexSchema{
			"id": {Name: "id", Unique: true, Indexer: byField("AccessKey", usageKey, false)},
		}},
		tableNetworks: {
			Name: tableNetworks,
			Indexes: map[string]*memdb.IndexSchema{
				"id": {Name: "id", Unique: true, Indexer: &memdb.IntFieldIndex{Field: "Slot"}},
			},
		},
		tableIdempotency: idempotencyTable(),
		tableIndex: {
			Name: tableIndex,
			Indexes: map[string]*memdb.IndexSchema{
				"id": {Name: "id", Unique: true, Indexer: byField("Key", indexEntryKey, false)},
			},
		},
	}}
	for name, t := range clusterTables() {
		sc.Tables[name] = t
	}
	sc.Tables[tableEndpoints] = endpointTable()
	sc.Tables[tableTemplates] = templateTable()
	sc.Tables[tableSessions].Indexes["endpoint"] = sessionsByEndpoint()
	for name, t := range volumeTables() {
		sc.Tables[name] = t
	}
	sc.Tables[tableSessions].Indexes["volume"] = sessionsByVolume()
	return sc
}

// simpleTable is a table with one unique string key.
func simpleTable(name, field string) *memdb.TableSchema {
	return &memdb.TableSchema{Name: name, Indexes: map[string]*memdb.IndexSchema{
		"id": {Name: "id", Unique: true, Indexer: &memdb.StringFieldIndex{Field: field}},
	}}
}
