package api

import (
	"context"
	"net/http"
	"net/url"
	"time"

	"github.com/corral-dev/corral/structs"
)

// CreateEndpointRequest is the body of POST /v1/endpoints: an inference
// endpoint whose replicas are sessions of type inference running Image
// (driver runc by default) and serving HTTP on Port.
type CreateEndpointRequest struct {
	Name          string            `json:"name"`
	Driver        string            `json:"driver,omitempty"`
	Image         string            `json:"image,omitempty"`
	Command       []string          `json:"command,omitempty"`
	Env           map[string]string `json:"env,omitempty"`
	Resources     structs.Slots     `json:"resources,omitempty"`
	ResourceGroup string            `json:"resource_group,omitempty"`
	Port          int               `json:"port"`
	// HealthPath is the replicas' health check (default "/").
	HealthPath string `json:"health_path,omitempty"`
	// Replicas is the initial count (default: min, or 1); MinReplicas and
	// MaxReplicas bound the autoscaler (default: replicas, or 1 and 8
	// with a target).
	Replicas    int `json:"replicas,omitempty"`
	MinReplicas int `json:"min_replicas,omitempty"`
	MaxReplicas int `json:"max_replicas,omitempty"`
	// TargetRPS or TargetConcurrency per replica turns autoscaling on.
	TargetRPS         float64 `json:"target_rps,omitempty"`
	TargetConcurrency float64 `json:"target_concurrency,omitempty"`
	// ScaleUpCooldown and ScaleDownDelay are Go durations ("10s", "1m").
	ScaleUpCooldown string `json:"scale_up_cooldown,omitempty"`
	ScaleDownDelay  string `json:"scale_down_delay,omitempty"`
	// Public endpoints take requests without a token.
	Public bool `json:"public,omitempty"`
}

// UpdateEndpointRequest is the body of POST /v1/endpoints/{name}: the
// fields given change, the others stay. A new image or command starts a
// rolling update.
type UpdateEndpointRequest struct {
	Image             *string  `json:"image,omitempty"`
	Command           []string `json:"command,omitempty"`
	Replicas          *int     `json:"replicas,omitempty"`
	MinReplicas       *int     `json:"min_replicas,omitempty"`
	MaxReplicas       *int     `json:"max_replicas,omitempty"`
	TargetRPS         *float64 `json:"target_rps,omitempty"`
	TargetConcurrency *float64 `json:"target_concurrency,omitempty"`
	ScaleUpCooldown   *string  `json:"scale_up_cooldown,omitempty"`
	ScaleDownDelay    *string  `json:"scale_down_delay,omitempty"`
	Public            *bool    `json:"public,omitempty"`
	HealthPath        *string  `json:"health_path,omitempty"`
}

// EndpointDetail is an endpoint with its replicas and observed load.
type EndpointDetail struct {
	Endpoint *structs.Endpoint `json:"endpoint"`
	// Token is the endpoint's bearer token, only in the answer to create.
	Token string `json:"token,omitempty"`
	// Path is where every server routes the endpoint's requests.
	Path     string            `json:"path"`
	Replicas []EndpointReplica `json:"replicas"`
	// RPS and Concurrency are the load the autoscaler last saw (all
	// servers' routers, mean over its window).
	RPS         float64 `json:"rps"`
	Concurrency float64 `json:"concurrency"`
}

// EndpointReplica is one replica session as the leader sees it.
type EndpointReplica struct {
	SessionID  string `json:"session_id"`
	KernelID   string `json:"kernel_id,omitempty"`
	Status     string `json:"status"`
	Generation int    `json:"generation"`
	// Health is "healthy", "unhealthy: why" or "unknown" (not checked yet).
	Health   string    `json:"health"`
	Draining bool      `json:"draining,omitempty"`
	Agent    string    `json:"agent,omitempty"`
	Created  time.Time `json:"created_at"`
}

// CreateEndpoint creates an endpoint; the answer holds its token, shown once.
func (c *Client) CreateEndpoint(ctx context.Context, req *CreateEndpointRequest) (*EndpointDetail, error) {
	var out EndpointDetail
	_, err := c.do(ctx, http.MethodPost, "/v1/endpoints", nil, req, &out, c.timeout)
	return &out, err
}

// ListEndpoints lists the endpoints the caller may see.
func (c *Client) ListEndpoints(ctx context.Context) ([]*EndpointDetail, error) {
	var out []*EndpointDetail
	_, err := c.do(ctx, http.MethodGet, "/v1/endpoints", nil, nil, &out, c.timeout)
	return out, err
}

// GetEndpoint returns one endpoint with its replicas and load.
func (c *Client) GetEndpoint(ctx context.Context, name string) (*EndpointDetail, error) {
	var out EndpointDetail
	_, err := c.do(ctx, http.MethodGet, "/v1/endpoints/"+url.PathEscape(name), nil, nil, &out, c.timeout)
	return &out, err
}

// UpdateEndpoint changes an endpoint's image, counts or targets.
func (c *Client) UpdateEndpoint(ctx context.Context, name string, req *UpdateEndpointRequest) (*EndpointDetail, error) {
	var out EndpointDetail
	_, err := c.do(ctx, http.MethodPost, "/v1/endpoints/"+url.PathEscape(name), nil, req, &out, c.timeout)
	return &out, err
}

// DeleteEndpoint deletes an endpoint and destroys its replicas.
func (c *Client) DeleteEndpoint(ctx context.Context, name string) error {
	_, err := c.do(ctx, http.MethodDelete, "/v1/endpoints/"+url.PathEscape(name), nil, nil, nil, c.timeout)
	return err
}
