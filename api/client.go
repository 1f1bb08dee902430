package api

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/corral-dev/corral/structs"
)

// Client is the Go client of corral's HTTP API. It keeps connections alive
// between calls and is safe for concurrent use.
type Client struct {
	base string // scheme://host[:port][/prefix], no trailing slash
	http *http.Client
	// timeout bounds ordinary requests; blocking queries get their wait plus
	// a margin, exec streams only the caller's context.
	timeout time.Duration
	// token is sent as "Authorization: Bearer <token>".
	token string
}

// SetToken sets the bearer token (an access key and secret, "AK....secret")
// sent with every request.
func (c *Client) SetToken(token string) { c.token = token }

// SetHTTPClient replaces the HTTP client the API client uses (a custom
// transport, e.g. one that dials inside a network namespace).
func (c *Client) SetHTTPClient(h *http.Client) { c.http = h }

// SetTLS sets the TLS configuration of https connections (e.g. the
// cluster CA as RootCAs).
func (c *Client) SetTLS(conf *tls.Config) {
	if t, ok := c.http.Transport.(*http.Transport); ok {
		t.TLSClientConfig = conf
	}
}

// Error is an answer of the API with a non-2xx status.
type Error struct {
	StatusCode int
	// Message is the server's "error" field, or the HTTP status text when
	// the body carried none.
	Message string
}

// Error returns the server's message.
func (e *Error) Error() string { return e.Message }

// IsNotFound reports whether err is an API answer 404 Not Found.
func IsNotFound(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.StatusCode == http.StatusNotFound
}

// DefaultRequestTimeout bounds every request that is neither a blocking
// query nor an exec stream.
const DefaultRequestTimeout = time.Minute

// DefaultWait is the wait of a blocking query that names none (the server's default).
const DefaultWait = 5 * time.Minute

// NewClient returns a client of the API at address, such as
// "http://127.0.0.1:8640" or "127.0.0.1:8640"; empty means DefaultAddress.
func NewClient(address string) (*Client, error) {
	base, err := parseAddress(address)
	if err != nil {
		return nil, err
	}
	transport := &http.Transport{
		Proxy: http.ProxyFromEnvironment,
		DialContext: (&net.Dialer{
			Timeout:   5 * time.Second,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          100,
		MaxIdleConnsPerHost:   64,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
	// No http.Client.Timeout: it would cut blocking queries and exec
	// streams; each call sets its own deadline instead.
	return &Client{base: base, http: &http.Client{Transport: transport}, timeout: DefaultRequestTimeout}, nil
}

// parseAddress normalizes an API address to scheme://host[:port][/prefix].
func parseAddress(address string) (string, error) {
	address = strings.TrimSpace(address)
	if address == "" {
		address = DefaultAddress
	}
	if !strings.Contains(address, "://") {
		address = "http://" + address
	}
	u, err := url.Parse(address)
	if err != nil {
		return "", fmt.Errorf("invalid API address %q: %v", address, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", fmt.Errorf("invalid API address %q: the scheme must be http or https", address)
	}
	if u.Host == "" {
		return "", fmt.Errorf("invalid API address %q: no host (want e.g. %s)", address, DefaultAddress)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return "", fmt.Errorf("invalid API address %q: want scheme://host:port only", address)
	}
	return strings.TrimRight(u.Scheme+"://"+u.Host+u.EscapedPath(), "/"), nil
}

// Address returns the base URL the client talks to.
func (c *Client) Address() string { return c.base }

// CreateSession submits a new session (POST /v1/sessions).
func (c *Client) CreateSession(ctx context.Context, req *CreateSessionRequest) (*SessionDetail, error) {
	var out SessionDetail
	if _, err := c.do(ctx, http.MethodPost, "/v1/sessions", nil, req, &out, c.timeout); err != nil {
		return nil, err
	}
	return &out, nil
}

// CreateSessionWithKey submits a new session with an idempotency key
// (see IdempotencyKeyHeader): sent again with the same key, for instance
// after a 503 or a broken connection, it returns the session the first
// send created instead of creating another.
func (c *Client) CreateSessionWithKey(ctx context.Context, req *CreateSessionRequest, key string) (*SessionDetail, error) {
	return c.CreateSession(context.WithValue(ctx, idempotencyKeyCtx{}, key), req)
}

// idempotencyKeyCtx carries an idempotency key from CreateSessionWithKey
// to send.
type idempotencyKeyCtx struct{}

// GetSession returns a session and its kernels; ref is an ID, a unique ID
// prefix or a name.
func (c *Client) GetSession(ctx context.Context, ref string) (*SessionDetail, error) {
	var out SessionDetail
	if _, err := c.do(ctx, http.MethodGet, sessionPath(ref, ""), nil, nil, &out, c.timeout); err != nil {
		return nil, err
	}
	return &out, nil
}

// WaitSession is a blocking query: it returns the session once its state
// index is greater than index, or when wait has passed (wait <= 0 means
// DefaultWait), together with the index to pass to the next call. Index 0
// answers at once. When the server's index went backwards (a state restored
// from an older snapshot), the returned index is 0 so that the next call
// resynchronizes instead of waiting for an index that may never come.
func (c *Client) WaitSession(ctx context.Context, ref string, index uint64, wait time.Duration) (*SessionDetail, uint64, error) {
	if wait <= 0 {
		wait = DefaultWait
	}
	q := url.Values{}
	timeout := c.timeout
	if index > 0 {
		q.Set("index", strconv.FormatUint(index, 10))
		q.Set("wait", wait.String())
		timeout = wait + wait/8 + 10*time.Second
	}
	var out SessionDetail
	got, err := c.do(ctx, http.MethodGet, sessionPath(ref, ""), q, nil, &out, timeout)
	if err != nil {
		return nil, 0, err
	}
	if got == 0 && out.Session != nil {
		got = out.Session.ModifyIndex
	}
	if got < index {
		got = 0
	}
	return &out, got, nil
}

// DestroySession cancels a pending session or terminates a running one.
func (c *Client) DestroySession(ctx context.Context, ref string) (*SessionDetail, error) {
	var out SessionDetail
	if _, err := c.do(ctx, http.MethodDelete, sessionPath(ref, ""), nil, nil, &out, c.timeout); err != nil {
		return nil, err
	}
	return &out, nil
}

// SessionLogs returns the stdout and stderr of one kernel of a session;
// kernel is a hostname ("main1") or kernel ID, empty for main1.
func (c *Client) SessionLogs(ctx context.Context, ref, kernel string) (*LogsResponse, error) {
	var q url.Values
	if kernel != "" {
		q = url.Values{"kernel": {kernel}}
	}
	var out LogsResponse
	if _, err := c.do(ctx, http.MethodGet, sessionPath(ref, "/logs"), q, nil, &out, c.timeout); err != nil {
		return nil, err
	}
	return &out, nil
}

// Exec runs a command in a running kernel of a session, copies its output
// to stdout and stderr as it arrives (nil discards), and returns its exit
// code. Only ctx bounds how long it may run.
func (c *Client) Exec(ctx context.Context, ref string, req *ExecRequest, stdout, stderr io.Writer) (int, error) {
	if stdout == nil {
		stdout = io.Discard
	}
	if stderr == nil {
		stderr = io.Discard
	}
	resp, err := c.send(ctx, http.MethodPost, sessionPath(ref, "/exec"), nil, req)
	if err != nil {
		return -1, err
	}
	defer closeBody(resp)
	dec := json.NewDecoder(resp.Body)
	for {
		var f ExecFrame
		if err := dec.Decode(&f); err != nil {
			if errors.Is(err, io.EOF) {
				return -1, errors.New("exec: the stream ended without an exit code")
			}
			if ctx.Err() != nil {
				return -1, ctx.Err()
			}
			return -1, fmt.Errorf("exec: reading the output stream: %w", err)
		}
		if len(f.Data) > 0 {
			w := stdout
			if f.Stream == "stderr" {
				w = stderr
			}
			if _, err := w.Write(f.Data); err != nil {
				return -1, fmt.Errorf("exec: writing %s: %w", f.Stream, err)
			}
		}
		if f.Error != "" {
			return -1, fmt.Errorf("exec: %s", f.Error)
		}
		if f.ExitCode != nil {
			return *f.ExitCode, nil
		}
	}
}

// ListAgents lists the agents the servers know, alive or not.
func (c *Client) ListAgents(ctx context.Context) ([]*structs.Agent, error) {
	var out []*structs.Agent
	if _, err := c.do(ctx, http.MethodGet, "/v1/agents", nil, nil, &out, c.timeout); err != nil {
		return nil, err
	}
	return out, nil
}

// GetAgent returns one agent by ID, unique ID prefix or name.
func (c *Client) GetAgent(ctx context.Context, id string) (*structs.Agent, error) {
	var out structs.Agent
	if _, err := c.do(ctx, http.MethodGet, "/v1/agents/"+url.PathEscape(id), nil, nil, &out, c.timeout); err != nil {
		return nil, err
	}
	return &out, nil
}

func sessionPath(ref, suffix string) string {
	return "/v1/sessions/" + url.PathEscape(ref) + suffix
}

// do sends a request, decodes a 2xx JSON answer into out and returns the
// answer's state index (0 when it carries none).
func (c *Client) do(ctx context.Context, method, path string, query url.Values, body, out any, timeout time.Duration) (uint64, error) {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	resp, err := c.send(ctx, method, path, query, body)
	if err != nil {
		return 0, err
	}
	defer closeBody(resp)
	if out != nil {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			return 0, fmt.Errorf("%s %s: decoding the answer: %w", method, path, err)
		}
	}
	index, _ := strconv.ParseUint(resp.Header.Get(IndexHeader), 10, 64)
	return index, nil
}

// send sends a request and returns the response when its status is 2xx;
// any other status becomes an *Error.
func (c *Client) send(ctx context.Context, method, path string, query url.Values, body any) (*http.Response, error) {
	u := c.base + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	var rd io.Reader
	raw, isRaw := body.(io.Reader)
	if isRaw {
		rd = raw // a file's bytes as they are (snapshot restore)
	} else if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, fmt.Errorf("%s %s: encoding the request: %w", method, path, err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	switch {
	case isRaw:
		req.Header.Set("Content-Type", "application/octet-stream")
	case body != nil:
		req.Header.Set("Content-Type", "application/json")
	}
	if key, _ := ctx.Value(idempotencyKeyCtx{}).(string); key != "" {
		req.Header.Set(IdempotencyKeyHeader, key)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		defer closeBody(resp)
		return nil, decodeError(resp)
	}
	return resp, nil
}

// decodeError turns a non-2xx answer into an *Error.
func decodeError(resp *http.Response) *Error {
	e := &Error{StatusCode: resp.StatusCode}
	var body ErrorResponse
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if json.Unmarshal(b, &body) == nil && body.Error != "" {
		e.Message = body.Error
	} else if e.Message = http.StatusText(resp.StatusCode); e.Message == "" {
		e.Message = "HTTP status " + strconv.Itoa(resp.StatusCode)
	}
	return e
}

// closeBody drains a little of what is left so the connection can be reused.
func closeBody(resp *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	_ = resp.Body.Close()
}

// ListImages returns the images cached on every alive agent.
func (c *Client) ListImages(ctx context.Context) ([]*AgentImage, error) {
	var out []*AgentImage
	if _, err := c.do(ctx, http.MethodGet, "/v1/images", nil, nil, &out, c.timeout); err != nil {
		return nil, err
	}
	return out, nil
}

// PullImage makes one agent pull an image into its cache and waits for it.
func (c *Client) PullImage(ctx context.Context, req *ImagePullRequest) (*AgentImage, error) {
	var out AgentImage
	if _, err := c.do(ctx, http.MethodPost, "/v1/images/pull", nil, req, &out, 0); err != nil {
		return nil, err
	}
	return &out, nil
}

// RemoveImage removes an image from one agent's cache (admin only) and
// returns it as it was; refused (409) while a kernel uses it.
func (c *Client) RemoveImage(ctx context.Context, req *ImagePullRequest) (*AgentImage, error) {
	var out AgentImage
	if _, err := c.do(ctx, http.MethodPost, "/v1/images/remove", nil, req, &out, c.timeout); err != nil {
		return nil, err
	}
	return &out, nil
}

// CreateUser creates a user (admin only).
func (c *Client) CreateUser(ctx context.Context, req *CreateUserRequest) (*structs.User, error) {
	var out structs.User
	_, err := c.do(ctx, http.MethodPost, "/v1/users", nil, req, &out, c.timeout)
	return &out, err
}

// ListUsers lists users (admin only).
func (c *Client) ListUsers(ctx context.Context) ([]*structs.User, error) {
	var out []*structs.User
	_, err := c.do(ctx, http.MethodGet, "/v1/users", nil, nil, &out, c.timeout)
	return out, err
}

// CreateKey creates an access key; the answer holds its token, shown once.
func (c *Client) CreateKey(ctx context.Context, req *CreateKeyRequest) (*CreateKeyResponse, error) {
	var out CreateKeyResponse
	_, err := c.do(ctx, http.MethodPost, "/v1/keys", nil, req, &out, c.timeout)
	return &out, err
}

// ListKeys lists access keys (admins all, users their own).
func (c *Client) ListKeys(ctx context.Context) ([]*structs.AccessKey, error) {
	var out []*structs.AccessKey
	_, err := c.do(ctx, http.MethodGet, "/v1/keys", nil, nil, &out, c.timeout)
	return out, err
}

// RevokeKey revokes an access key (admin only).
func (c *Client) RevokeKey(ctx context.Context, key string) (*structs.AccessKey, error) {
	var out structs.AccessKey
	_, err := c.do(ctx, http.MethodDelete, "/v1/keys/"+url.PathEscape(key), nil, nil, &out, c.timeout)
	return &out, err
}

// KeyStatus returns a key, its policy and its current usage.
func (c *Client) KeyStatus(ctx context.Context, key string) (*KeyStatus, error) {
	var out KeyStatus
	_, err := c.do(ctx, http.MethodGet, "/v1/keys/"+url.PathEscape(key)+"/status", nil, nil, &out, c.timeout)
	return &out, err
}

// ApplyPolicy sets the resource policy of a key (admin only).
func (c *Client) ApplyPolicy(ctx context.Context, key, policy string) (*structs.AccessKey, error) {
	var out structs.AccessKey
	_, err := c.do(ctx, http.MethodPost, "/v1/keys/"+url.PathEscape(key)+"/policy", nil, &ApplyPolicyRequest{Policy: policy}, &out, c.timeout)
	return &out, err
}

// CreatePolicy creates or replaces a resource policy (admin only).
func (c *Client) CreatePolicy(ctx context.Context, req *PolicyRequest) (*structs.ResourcePolicy, error) {
	var out structs.ResourcePolicy
	_, err := c.do(ctx, http.MethodPost, "/v1/policies", nil, req, &out, c.timeout)
	return &out, err
}

// ListPolicies lists resource policies.
func (c *Client) ListPolicies(ctx context.Context) ([]*structs.ResourcePolicy, error) {
	var out []*structs.ResourcePolicy
	_, err := c.do(ctx, http.MethodGet, "/v1/policies", nil, nil, &out, c.timeout)
	return out, err
}

// CreateGroup creates a resource group (admin only).
func (c *Client) CreateGroup(ctx context.Context, g *structs.ResourceGroup) (*structs.ResourceGroup, error) {
	var out structs.ResourceGroup
	_, err := c.do(ctx, http.MethodPost, "/v1/groups", nil, g, &out, c.timeout)
	return &out, err
}

// UpdateGroup replaces a resource group's configuration (admin only).
func (c *Client) UpdateGroup(ctx context.Context, g *structs.ResourceGroup) (*structs.ResourceGroup, error) {
	var out structs.ResourceGroup
	_, err := c.do(ctx, http.MethodPut, "/v1/groups/"+url.PathEscape(g.Name), nil, g, &out, c.timeout)
	return &out, err
}

// ListGroups lists resource groups.
func (c *Client) ListGroups(ctx context.Context) ([]*structs.ResourceGroup, error) {
	var out []*structs.ResourceGroup
	_, err := c.do(ctx, http.MethodGet, "/v1/groups", nil, nil, &out, c.timeout)
	return out, err
}

// Queue lists a group's pending sessions in the order the scheduler takes them.
func (c *Client) Queue(ctx context.Context, group string) ([]*QueueEntry, error) {
	var out []*QueueEntry
	q := url.Values{}
	if group != "" {
		q.Set("group", group)
	}
	_, err := c.do(ctx, http.MethodGet, "/v1/queue", q, nil, &out, c.timeout)
	return out, err
}

// SessionStats samples the resource usage of a session's running kernels.
func (c *Client) SessionStats(ctx context.Context, ref string) ([]*KernelStats, error) {
	var out []*KernelStats
	_, err := c.do(ctx, http.MethodGet, "/v1/sessions/"+url.PathEscape(ref)+"/stats", nil, nil, &out, c.timeout)
	return out, err
}

// LeaveAgent gives a node up: the agent is TERMINATED and its kernels end
// (batch sessions with retries are re-queued).
func (c *Client) LeaveAgent(ctx context.Context, id string) (*structs.Agent, error) {
	var out structs.Agent
	_, err := c.do(ctx, http.MethodPost, "/v1/agents/"+url.PathEscape(id)+"/leave", nil, nil, &out, c.timeout)
	return &out, err
}

// DrainAgent stops (drain) or resumes new placements on an agent; force
// also terminates the kernels it runs.
func (c *Client) DrainAgent(ctx context.Context, id string, drain, force bool) (*structs.Agent, error) {
	var out structs.Agent
	path := "/v1/agents/" + url.PathEscape(id) + "/eligible"
	var body any
	if drain {
		path = "/v1/agents/" + url.PathEscape(id) + "/drain"
		body = &DrainRequest{Force: force}
	}
	_, err := c.do(ctx, http.MethodPost, path, nil, body, &out, c.timeout)
	return &out, err
}

// JoinToken returns the token agents join the cluster with (admins;
// clusters with automatic TLS only).
func (c *Client) JoinToken(ctx context.Context) (string, error) {
	var out struct {
		JoinToken string `json:"join_token"`
	}
	_, err := c.do(ctx, http.MethodGet, "/v1/system/join-token", nil, nil, &out, c.timeout)
	return out.JoinToken, err
}

// RevokeNodeResponse lists the certificate serials a revocation cut off.
type RevokeNodeResponse struct {
	Node    string   `json:"node"`
	Serials []string `json:"serials"`
}

// RevokeNode revokes every certificate the cluster CA issued to a node
// (name or agent ID): the servers refuse it from then on (admins).
func (c *Client) RevokeNode(ctx context.Context, node string) (*RevokeNodeResponse, error) {
	var out RevokeNodeResponse
	_, err := c.do(ctx, http.MethodPost, "/v1/nodes/"+url.PathEscape(node)+"/revoke", nil, nil, &out, c.timeout)
	return &out, err
}

// DeleteUser deletes a user and its access keys (admin only); refused
// while the user has sessions that have not ended, or endpoints.
func (c *Client) DeleteUser(ctx context.Context, name string) (*DeleteConfigResponse, error) {
	return c.deleteConfig(ctx, "/v1/users/"+url.PathEscape(name))
}

// DeletePolicy deletes a resource policy (admin only); refused while keys
// have it applied.
func (c *Client) DeletePolicy(ctx context.Context, name string) (*DeleteConfigResponse, error) {
	return c.deleteConfig(ctx, "/v1/policies/"+url.PathEscape(name))
}

// DeleteGroup deletes a resource group's configuration (admin only);
// refused while agents, sessions that have not ended or endpoints are in
// the group.
func (c *Client) DeleteGroup(ctx context.Context, name string) (*DeleteConfigResponse, error) {
	return c.deleteConfig(ctx, "/v1/groups/"+url.PathEscape(name))
}

func (c *Client) deleteConfig(ctx context.Context, path string) (*DeleteConfigResponse, error) {
	var out DeleteConfigResponse
	if _, err := c.do(ctx, http.MethodDelete, path, nil, nil, &out, c.timeout); err != nil {
		return nil, err
	}
	return &out, nil
}
