package state

import (
	"fmt"

	"github.com/hashicorp/go-memdb"

	"github.com/corral-dev/corral/structs"
)

// tableTemplates holds the session templates (structs.Template) by ID
// (owner/name).
const tableTemplates = "templates"

func templateID(t *structs.Template) string { return t.ID }

func templateTable() *memdb.TableSchema {
	return &memdb.TableSchema{Name: tableTemplates, Indexes: map[string]*memdb.IndexSchema{
		"id": {Name: "id", Unique: true, Indexer: byField("ID", templateID, false)},
	}}
}

// Template returns one template by ID (owner/name).
func (sn *Snapshot) Template(id string) (*structs.Template, error) {
	raw, err := sn.txn.First(tableTemplates, "id", id)
	if err != nil {
		return nil, err
	}
	if raw == nil {
		return nil, fmt.Errorf("no template %q: %w", id, ErrNotFound)
	}
	return raw.(*structs.Template), nil
}

// Templates lists every template by ID (global ones first: their IDs
// start with '/').
func (sn *Snapshot) Templates() ([]*structs.Template, error) {
	return listAll[*structs.Template](sn.txn, tableTemplates)
}

// UpsertTemplate creates or replaces a template.
func (s *StateStore) UpsertTemplate(index uint64, req *structs.TemplateUpsertRequest) error {
	if req.Template == nil || req.Template.Name == "" || req.Template.ID != structs.TemplateID(req.Template.Owner, req.Template.Name) {
		return fmt.Errorf("template upsert without a well-formed template")
	}
	w := s.write(index)
	defer w.txn.Abort()
	t := req.Template.Copy()
	raw, err := w.txn.First(tableTemplates, "id", t.ID)
	if err != nil {
		return err
	}
	t.CreateIndex, t.CreatedAt = index, req.Time
	if raw != nil {
		old := raw.(*structs.Template)
		t.CreateIndex, t.CreatedAt = old.CreateIndex, old.CreatedAt
	}
	t.ModifyIndex, t.UpdatedAt = index, req.Time
	if err := w.txn.Insert(tableTemplates, t); err != nil {
		return err
	}
	w.dirty[tableTemplates] = true
	return w.commit()
}

// DeleteTemplate removes a template.
func (s *StateStore) DeleteTemplate(index uint64, req *structs.TemplateDeleteRequest) error {
	w := s.write(index)
	defer w.txn.Abort()
	raw, err := w.txn.First(tableTemplates, "id", req.ID)
	if err != nil {
		return err
	}
	if raw == nil {
		return fmt.Errorf("no template %q: %w", req.ID, ErrNotFound)
	}
	if err := w.txn.Delete(tableTemplates, raw); err != nil {
		return err
	}
	w.dirty[tableTemplates] = true
	return w.commit()
}
