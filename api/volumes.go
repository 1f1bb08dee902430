package api

import (
	"context"
	"net/http"
	"net/url"

	"github.com/corral-dev/corral/structs"
)

// CreateVolumeRequest is the body of POST /v1/volumes.
type CreateVolumeRequest struct {
	Name string `json:"name"`
	// Backend defaults to the only backend the agents reach.
	Backend       string `json:"backend,omitempty"`
	ResourceGroup string `json:"resource_group,omitempty"`
	// Quota is a size such as "100G" ("": none).
	Quota string `json:"quota,omitempty"`
}

// ShareVolumeRequest is the body of POST /v1/volumes/{name}/share and
// /unshare (ReadOnly is ignored there).
type ShareVolumeRequest struct {
	User     string `json:"user"`
	ReadOnly bool   `json:"read_only,omitempty"`
}

// VolumeInfo is a volume with its measured usage.
type VolumeInfo struct {
	*structs.Volume
	// UsageBytes and UsageFiles are measured on an agent that reaches
	// the backend; UsageError says why they are missing.
	UsageBytes int64  `json:"usage_bytes"`
	UsageFiles int64  `json:"usage_files"`
	UsageError string `json:"usage_error,omitempty"`
	// QuotaEnforcement says how the quota holds, where the volume has
	// one: "enforced" (the filesystem refuses writes past it: a btrfs
	// qgroup) or "measured" (reported only).
	QuotaEnforcement string `json:"quota_enforcement,omitempty"`
	// Access is the caller's: "owner", "rw" or "ro".
	Access string `json:"access"`
}

// VolumeList is the answer of GET /v1/volumes.
type VolumeList struct {
	Volumes []*VolumeInfo `json:"volumes"`
}

// SSHKeys is the body and answer of /v1/user/ssh-keys.
type SSHKeys struct {
	Keys []string `json:"keys"`
}

// CreateVolume creates a volume of the caller's.
func (c *Client) CreateVolume(ctx context.Context, req *CreateVolumeRequest) (*structs.Volume, error) {
	var out structs.Volume
	_, err := c.do(ctx, http.MethodPost, "/v1/volumes", nil, req, &out, c.timeout)
	return &out, err
}

// Volumes lists the caller's volumes and those shared with them (an
// admin: all) with their usage.
func (c *Client) Volumes(ctx context.Context) (*VolumeList, error) {
	var out VolumeList
	_, err := c.do(ctx, http.MethodGet, "/v1/volumes", nil, nil, &out, c.timeout)
	return &out, err
}

// DeleteVolume deletes one of the caller's volumes (not its files).
func (c *Client) DeleteVolume(ctx context.Context, name string) error {
	_, err := c.do(ctx, http.MethodDelete, "/v1/volumes/"+url.PathEscape(name), nil, nil, nil, c.timeout)
	return err
}

// ShareVolume lets user mount the caller's volume name.
func (c *Client) ShareVolume(ctx context.Context, name, user string, readOnly bool) (*structs.Volume, error) {
	var out structs.Volume
	_, err := c.do(ctx, http.MethodPost, "/v1/volumes/"+url.PathEscape(name)+"/share", nil, &ShareVolumeRequest{User: user, ReadOnly: readOnly}, &out, c.timeout)
	return &out, err
}

// UnshareVolume takes user's share away.
func (c *Client) UnshareVolume(ctx context.Context, name, user string) (*structs.Volume, error) {
	var out structs.Volume
	_, err := c.do(ctx, http.MethodPost, "/v1/volumes/"+url.PathEscape(name)+"/unshare", nil, &ShareVolumeRequest{User: user}, &out, c.timeout)
	return &out, err
}

// AddSSHKey adds an authorized_keys line to the caller's SSH keys.
func (c *Client) AddSSHKey(ctx context.Context, key string) (*SSHKeys, error) {
	var out SSHKeys
	_, err := c.do(ctx, http.MethodPost, "/v1/user/ssh-keys", nil, &SSHKeys{Keys: []string{key}}, &out, c.timeout)
	return &out, err
}

// SSHKeys lists the caller's SSH keys.
func (c *Client) SSHKeys(ctx context.Context) (*SSHKeys, error) {
	var out SSHKeys
	_, err := c.do(ctx, http.MethodGet, "/v1/user/ssh-keys", nil, nil, &out, c.timeout)
	return &out, err
}
