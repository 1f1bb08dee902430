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

// statusIndexer indexes a session by its status string.
type sessionStatusIndexer struct{}

func (sessionStatusIndexer) FromObject(obj any) (bool, []byte, error) {
	s, ok := obj.(*structs.Session)
	if !ok {
		return false, nil, fmt.Errorf("unexpected type %T", obj)
	}
	return true, []byte(string(s.Status) + "\x00"), nil
}

func (sessionStatusIndexer) FromArgs(args ...any) ([]byte, error) {
	if len(args) != 1 {
		return nil, fmt.Errorf("must provide one argument")
	}
	s, ok := args[0].(string)
	if !ok {
		return nil, fmt.Errorf("argument must be a string: %#v", args[0])
	}
	return []byte(s + "\x00"), nil
}

func schema() *memdb.DBSchema {
	return &memdb.DBSchema{Tables: map[string]*memdb.TableSchema{
		tableSessions: {
			Name: tableSessions,
			Indexes: map[string]*memdb.IndexSchema{
				"id":     {Name: "id", Unique: true, Indexer: &memdb.StringFieldIndex{Field: "ID"}},
				"name":   {Name: "name", AllowMissing: true, Indexer: &memdb.StringFieldIndex{Field: "Name"}},
				"status": {Name: "status", Indexer: sessionStatusIndexer{}},
			},
		},
		tableKernels: {
			Name: tableKernels,
			Indexes: map[string]*memdb.IndexSchema{
				"id":      {Name: "id", Unique: true, Indexer: &memdb.StringFieldIndex{Field: "ID"}},
				"session": {Name: "session", Indexer: &memdb.StringFieldIndex{Field: "SessionID"}},
				"agent":   {Name: "agent", AllowMissing: true, Indexer: &memdb.StringFieldIndex{Field: "AgentID"}},
			},
		},
		tableAgents: {
			Name: tableAgents,
			Indexes: map[string]*memdb.IndexSchema{
				"id": {Name: "id", Unique: true, Indexer: &memdb.StringFieldIndex{Field: "ID"}},
			},
		},
		tableUsers:    simpleTable(tableUsers, "Name"),
		tableKeys:     simpleTable(tableKeys, "AccessKey"),
		tablePolicies: simpleTable(tablePolicies, "Name"),
		tableGroups:   simpleTable(tableGroups, "Name"),
		tableUsage:    simpleTable(tableUsage, "AccessKey"),
		tableNetworks: {
			Name: tableNetworks,
			Indexes: map[string]*memdb.IndexSchema{
				"id": {Name: "id", Unique: true, Indexer: &memdb.IntFieldIndex{Field: "Slot"}},
			},
		},
		tableIndex: {
			Name: tableIndex,
			Indexes: map[string]*memdb.IndexSchema{
				"id": {Name: "id", Unique: true, Indexer: &memdb.StringFieldIndex{Field: "Key"}},
			},
		},
	}}
}

// simpleTable is a table with one unique string key.
func simpleTable(name, field string) *memdb.TableSchema {
	return &memdb.TableSchema{Name: name, Indexes: map[string]*memdb.IndexSchema{
		"id": {Name: "id", Unique: true, Indexer: &memdb.StringFieldIndex{Field: field}},
	}}
}
