package api

import (
	"context"
	"net/http"
	"net/url"

	"github.com/corral-dev/corral/structs"
)

// templateQuery selects the global template of a name rather than the
// caller's own.
func templateQuery(global bool) url.Values {
	if !global {
		return nil
	}
	return url.Values{"global": {"1"}}
}

// CreateTemplate stores a session template (docs/templates.md); a bad
// source is a 400 whose message gives file:line:col and the field.
func (c *Client) CreateTemplate(ctx context.Context, req *TemplateRequest) (*structs.Template, error) {
	var out structs.Template
	if _, err := c.do(ctx, http.MethodPost, "/v1/templates", nil, req, &out, c.timeout); err != nil {
		return nil, err
	}
	return &out, nil
}

// ListTemplates lists the templates the caller may use: their own and
// the global ones (an admin sees every user's).
func (c *Client) ListTemplates(ctx context.Context) ([]*structs.Template, error) {
	var out []*structs.Template
	_, err := c.do(ctx, http.MethodGet, "/v1/templates", nil, nil, &out, c.timeout)
	return out, err
}

// GetTemplate returns a template by name: the caller's own, else the
// global one (only the global one with global set).
func (c *Client) GetTemplate(ctx context.Context, name string, global bool) (*structs.Template, error) {
	var out structs.Template
	if _, err := c.do(ctx, http.MethodGet, "/v1/templates/"+url.PathEscape(name), templateQuery(global), nil, &out, c.timeout); err != nil {
		return nil, err
	}
	return &out, nil
}

// DeleteTemplate removes the caller's template of that name (the global
// one with global set: admins only).
func (c *Client) DeleteTemplate(ctx context.Context, name string, global bool) error {
	_, err := c.do(ctx, http.MethodDelete, "/v1/templates/"+url.PathEscape(name), templateQuery(global), nil, nil, c.timeout)
	return err
}

// PlanSession asks where the scheduler would place a session now,
// without submitting it (corral run -dry-run).
func (c *Client) PlanSession(ctx context.Context, req *CreateSessionRequest) (*PlanResponse, error) {
	var out PlanResponse
	if _, err := c.do(ctx, http.MethodPost, "/v1/plan", nil, req, &out, c.timeout); err != nil {
		return nil, err
	}
	return &out, nil
}
