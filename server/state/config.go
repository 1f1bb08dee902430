package state

import (
	"fmt"
	"maps"

	"github.com/hashicorp/go-memdb"

	"github.com/corral-dev/corral/structs"
)

// UpsertConfig creates or replaces users, keys, policies and groups.
func (s *StateStore) UpsertConfig(index uint64, req *structs.ConfigUpsertRequest) error {
	w := s.write(index)
	defer w.txn.Abort()
	for _, u := range req.Users {
		c := *u
		if cur, err := w.txn.First(tableUsers, "id", u.Name); err == nil && cur != nil {
			c.CreateIndex, c.CreatedAt = cur.(*structs.User).CreateIndex, cur.(*structs.User).CreatedAt
		} else {
			c.CreateIndex, c.CreatedAt = index, req.Time
		}
		c.ModifyIndex = index
		if err := w.put(tableUsers, &c); err != nil {
			return err
		}
	}
	for _, k := range req.Keys {
		c := k.Copy()
		if cur, err := w.txn.First(tableKeys, "id", k.AccessKey); err == nil && cur != nil {
			old := cur.(*structs.AccessKey)
			c.CreateIndex, c.CreatedAt = old.CreateIndex, old.CreatedAt
			if c.SecretHash == "" {
				c.SecretHash = old.SecretHash
			}
		} else {
			c.CreateIndex, c.CreatedAt = index, req.Time
		}
		if c.SecretHash == "" {
			return fmt.Errorf("access key %s has no secret", c.AccessKey)
		}
		c.ModifyIndex = index
		if err := w.put(tableKeys, c); err != nil {
			return err
		}
	}
	for _, p := range req.Policies {
		c := *p
		c.TotalResourceSlots = p.TotalResourceSlots.Copy()
		if err := w.put(tablePolicies, &c); err != nil {
			return err
		}
	}
	for _, g := range req.Groups {
		c := *g
		c.ResourcePriority = append([]string(nil), g.ResourcePriority...)
		if cur, err := w.txn.First(tableGroups, "id", g.Name); err == nil && cur != nil {
			c.CreateIndex = cur.(*structs.ResourceGroup).CreateIndex
		} else {
			c.CreateIndex = index
		}
		c.ModifyIndex = index
		if err := w.put(tableGroups, &c); err != nil {
			return err
		}
	}
	return w.commit()
}

func (w *writer) put(table string, obj any) error {
	w.dirty[table] = true
	return w.txn.Insert(table, obj)
}

func listAll[T any](txn *memdb.Txn, table string) ([]T, error) {
	return watchedList[T](txn, nil, table, "id")
}

// watchedList returns the rows of table that index matches args, adding
// the query's watch channel to ws when ws is not nil.
func watchedList[T any](txn *memdb.Txn, ws memdb.WatchSet, table, index string, args ...any) ([]T, error) {
	it, err := txn.Get(table, index, args...)
	if err != nil {
		return nil, err
	}
	if ws != nil {
		ws.Add(it.WatchCh())
	}
	var out []T
	for raw := it.Next(); raw != nil; raw = it.Next() {
		out = append(out, raw.(T))
	}
	return out, nil
}

func first[T any](txn *memdb.Txn, table, id, what string) (T, error) {
	var zero T
	raw, err := txn.First(table, "id", id)
	if err != nil {
		return zero, err
	}
	if raw == nil {
		return zero, fmt.Errorf("%s %q: %w", what, id, ErrNotFound)
	}
	return raw.(T), nil
}

// Users lists all users.
func (sn *Snapshot) Users() ([]*structs.User, error) {
	return listAll[*structs.User](sn.txn, tableUsers)
}

// User returns one user.
func (sn *Snapshot) User(name string) (*structs.User, error) {
	return first[*structs.User](sn.txn, tableUsers, name, "user")
}

// Keys lists all access keys.
func (sn *Snapshot) Keys() ([]*structs.AccessKey, error) {
	return listAll[*structs.AccessKey](sn.txn, tableKeys)
}

// Key returns one access key.
func (sn *Snapshot) Key(id string) (*structs.AccessKey, error) {
	return first[*structs.AccessKey](sn.txn, tableKeys, id, "access key")
}

// Policies lists all resource policies.
func (sn *Snapshot) Policies() ([]*structs.ResourcePolicy, error) {
	return listAll[*structs.ResourcePolicy](sn.txn, tablePolicies)
}

// Policy returns one resource policy.
func (sn *Snapshot) Policy(name string) (*structs.ResourcePolicy, error) {
	return first[*structs.ResourcePolicy](sn.txn, tablePolicies, name, "resource policy")
}

// Groups lists all configured resource groups.
func (sn *Snapshot) Groups() ([]*structs.ResourceGroup, error) {
	return listAll[*structs.ResourceGroup](sn.txn, tableGroups)
}

// Group returns one resource group's configuration.
func (sn *Snapshot) Group(name string) (*structs.ResourceGroup, error) {
	return first[*structs.ResourceGroup](sn.txn, tableGroups, name, "resource group")
}

// Usage returns what an access key holds now (empty when nothing).
func (sn *Snapshot) Usage(key string) *structs.KeyUsage {
	txn := sn.txn
	if w := sn.w; w != nil {
		if u, ok := w.usage[key]; ok {
			return u
		}
		txn = w.base
	}
	u, err := first[*structs.KeyUsage](txn, tableUsage, key, "usage")
	if err != nil {
		return &structs.KeyUsage{AccessKey: key, Sessions: map[string]bool{}, Occupied: structs.Slots{}}
	}
	return u
}

// groupUsageKey is the usage-table key of a resource group's holdings.
func groupUsageKey(group string) string {
	if group == "" {
		group = structs.DefaultResourceGroup
	}
	return "group:" + group
}

// GroupUsage returns what the sessions of a resource group hold now.
func (sn *Snapshot) GroupUsage(group string) structs.Slots {
	return sn.Usage(groupUsageKey(group)).Occupied
}

// KeyPolicy returns the resource policy of an access key; nil when the key
// has none (or it was deleted): unlimited.
func (sn *Snapshot) KeyPolicy(accessKey string) *structs.ResourcePolicy {
	if accessKey == "" {
		return nil
	}
	k, err := sn.Key(accessKey)
	if err != nil || k.Policy == "" {
		return nil
	}
	p, err := sn.Policy(k.Policy)
	if err != nil {
		return nil
	}
	return p
}

// AllUsage lists the usage of every key that holds something.
func (sn *Snapshot) AllUsage() ([]*structs.KeyUsage, error) {
	return listAll[*structs.KeyUsage](sn.txn, tableUsage)
}

// occupy adds a session and a kernel's slots to its key's usage.
func (w *writer) occupy(key, sessionID string, res structs.Slots) error {
	if key == "" {
		return nil
	}
	u, err := w.ownUsage(key)
	if err != nil {
		return err
	}
	u.Occupied = addSlots(u.Occupied, res) // u is this transaction's copy
	u.Sessions[sessionID] = true
	return nil
}

// release subtracts a kernel's slots from its key's usage and, when the
// session has ended, drops it from the concurrency set.
func (w *writer) release(key, sessionID string, res structs.Slots, sessionEnded bool) error {
	if key == "" {
		return nil
	}
	u, err := w.ownUsage(key)
	if err != nil {
		return err
	}
	occ := u.Occupied.Sub(res)
	if occ.AnyNegative() {
		return fmt.Errorf("usage of key %s would go negative releasing session %s", key, sessionID)
	}
	u.Occupied = occ
	if sessionEnded {
		delete(u.Sessions, sessionID)
	}
	return nil
}

// ownUsage returns the key's usage as a copy private to this transaction,
// already inserted into the table; changes to it are the transaction's.
func (w *writer) ownUsage(key string) (*structs.KeyUsage, error) {
	if u, ok := w.usage[key]; ok {
		return u, nil
	}
	cur := w.snap().Usage(key)
	// The concurrency set is copied whole (maps.Clone copies the table,
	// not entry by entry): a group's set holds every session it runs.
	u := &structs.KeyUsage{AccessKey: key, Sessions: maps.Clone(cur.Sessions), Occupied: cur.Occupied.Copy()}
	if u.Sessions == nil {
		u.Sessions = map[string]bool{}
	}
	if err := w.put(tableUsage, u); err != nil {
		return nil, err
	}
	w.usage[key] = u
	return u, nil
}
