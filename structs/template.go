package structs

import "time"

// Template is a stored session template (docs/templates.md): the HCL or
// JSON source of one session's defaults, which `session create -template`
// starts from. Templates belong to a user, or are global (Owner empty,
// created by an admin) and usable by everyone.
type Template struct {
	// ID is Owner + "/" + Name ("/NAME" for a global template).
	ID   string `json:"id"`
	Name string `json:"name"`
	// Owner is the user the template belongs to; empty for a global one.
	Owner string `json:"owner,omitempty"`
	// Filename is the name the source was read from, for error messages.
	Filename string `json:"filename"`
	// Source is the template as written (HCL or JSON); the server parsed
	// and validated it when it was stored.
	Source      string    `json:"source"`
	CreatedAt   time.Time `json:"created_at"`
	UpdatedAt   time.Time `json:"updated_at"`
	CreateIndex uint64    `json:"create_index"`
	ModifyIndex uint64    `json:"modify_index"`
}

// TemplateID is the ID of the template name of owner ("" for global).
func TemplateID(owner, name string) string { return owner + "/" + name }

// Global reports whether the template is usable by every user.
func (t *Template) Global() bool { return t.Owner == "" }

// Copy returns a copy of t, safe to modify.
func (t *Template) Copy() *Template {
	c := *t
	return &c
}

// TemplateUpsertRequest creates or replaces a template.
type TemplateUpsertRequest struct {
	Template *Template `json:"template"`
	Time     time.Time `json:"time"`
}

// TemplateDeleteRequest removes a template by ID.
type TemplateDeleteRequest struct {
	ID   string    `json:"id"`
	Time time.Time `json:"time"`
}
