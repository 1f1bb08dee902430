package server_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	grpcstatus "google.golang.org/grpc/status"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/rpc"
	"github.com/corral-dev/corral/server"
	"github.com/corral-dev/corral/structs"
)

// rawCodec sends and receives messages as the JSON bytes given, so that a
// test double speaks exactly the fixtures of an older protocol.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return *(v.(*json.RawMessage)), nil }
func (rawCodec) Unmarshal(b []byte, v any) error {
	*(v.(*json.RawMessage)) = append([]byte(nil), b...)
	return nil
}
func (rawCodec) Name() string { return "json" } // the codec corral's servers use

// oldAgent is a test double of a protocol 1 agent: it sends the messages of
// rpc/testdata/golden/v1 (with its own ID and inventory) over plain gRPC.
type oldAgent struct {
	t  *testing.T
	cc *grpc.ClientConn
	id string
}

func dialOldAgent(t *testing.T, addr, id string) *oldAgent {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return &oldAgent{t: t, cc: cc, id: id}
}

// v1 reads a protocol 1 fixture and sets the given fields on it (a path
// of object keys, dot separated), refusing to add keys the fixture lacks:
// the message keeps the old shape.
func (a *oldAgent) v1(name string, set map[string]any) json.RawMessage {
	a.t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "rpc", "testdata", "golden", "v1", name+".json"))
	if err != nil {
		a.t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		a.t.Fatal(err)
	}
	for path, v := range set {
		keys := strings.Split(path, ".")
		obj := m
		for _, k := range keys[:len(keys)-1] {
			obj = obj[k].(map[string]any)
		}
		if _, ok := obj[keys[len(keys)-1]]; !ok {
			a.t.Fatalf("fixture %s has no %s", name, path)
		}
		obj[keys[len(keys)-1]] = v
	}
	out, err := json.Marshal(m)
	if err != nil {
		a.t.Fatal(err)
	}
	return out
}

func (a *oldAgent) register(extra map[string]any) (map[string]any, error) {
	set := map[string]any{
		"agent.id": a.id, "agent.name": "old-" + a.id, "agent.resource_group": structs.DefaultResourceGroup,
		"agent.status": "", "agent.status_info": "", "agent.rpc_addr": "127.0.0.1:1", "agent.serf_addr": "",
		"agent.drivers": []string{"exec"}, "agent.drain": false, "agent.version": "0.1-protocol-1",
		"agent.capacity": map[string]any{"cpu": 4, "mem": 1 << 30}, "agent.occupied": map[string]any{},
	}
	req := a.v1("RegisterRequest", set)
	for k, v := range extra { // fields a newer agent adds
		var m map[string]any
		_ = json.Unmarshal(req, &m)
		m[k] = v
		req, _ = json.Marshal(m)
	}
	var resp json.RawMessage
	if err := a.cc.Invoke(context.Background(), "/corral.v1.Server/Register", &req, &resp); err != nil {
		return nil, err
	}
	var out map[string]any
	return out, json.Unmarshal(resp, &out)
}

func (a *oldAgent) watch(ctx context.Context, extra map[string]any) (grpc.ClientStream, error) {
	req := a.v1("WatchRequest", map[string]any{"agent_id": a.id})
	if len(extra) > 0 {
		var m map[string]any
		_ = json.Unmarshal(req, &m)
		for k, v := range extra {
			m[k] = v
		}
		req, _ = json.Marshal(m)
	}
	cs, err := a.cc.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, "/corral.v1.Server/WatchKernels")
	if err != nil {
		return nil, err
	}
	if err := cs.SendMsg(&req); err != nil {
		return nil, err
	}
	return cs, cs.CloseSend()
}

func (a *oldAgent) update(kernelID string, st structs.KernelStatus, exit *int) {
	a.t.Helper()
	u := map[string]any{"kernel_id": kernelID, "status": st, "info": "old agent", "time": time.Now().UTC()}
	if exit != nil {
		u["exit_code"] = *exit
	}
	req, _ := json.Marshal(map[string]any{"agent_id": a.id, "updates": []any{u}})
	raw := json.RawMessage(req)
	var resp json.RawMessage
	if err := a.cc.Invoke(context.Background(), "/corral.v1.Server/UpdateKernels", &raw, &resp); err != nil {
		a.t.Fatalf("update %s to %s: %v", kernelID, st, err)
	}
	if strings.Contains(string(resp), "skipped") {
		a.t.Fatalf("update %s to %s skipped: %s", kernelID, st, resp)
	}
}

// TestMixedVersionAgent: an agent of the previous protocol (no version in
// its messages) registers with a server of this version and runs a batch
// session end to end; agents outside the skew policy are refused with a
// message that says which side to upgrade.
func TestMixedVersionAgent(t *testing.T) {
	dir := t.TempDir()
	// Agents of protocol 1 predate automatic TLS: their cluster runs
	// without it (an existing cluster keeps running so when upgraded).
	srv := startServerCfg(t, dir, func(c *server.Config) { c.Insecure = true })
	t.Cleanup(srv.Shutdown)
	c := &cluster{srv: srv, client: client(t, srv, dir)}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	old := dialOldAgent(t, srv.RPCAddr(), "old-agent-1")
	resp, err := old.register(nil)
	if err != nil {
		t.Fatalf("a protocol 1 agent was refused: %v", err)
	}
	if v, _ := resp["protocol_version"].(float64); int(v) != rpc.ProtocolVersion || resp["server_name"] == nil {
		t.Fatalf("register response: %v", resp)
	}
	stream, err := old.watch(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	c.waitAgentAlive(t, old.id)

	s := create(t, c, &api.CreateSessionRequest{Type: "batch", Command: []string{"true"}, Resources: small})
	var kernelID string
	for kernelID == "" {
		var raw json.RawMessage
		if err := stream.RecvMsg(&raw); err != nil {
			t.Fatalf("watch: %v", err)
		}
		var msg struct {
			Kernels []struct {
				ID string `json:"id"`
			} `json:"kernels"`
		}
		if err := json.Unmarshal(raw, &msg); err != nil {
			t.Fatal(err)
		}
		for _, k := range msg.Kernels {
			kernelID = k.ID
		}
	}
	zero := 0
	old.update(kernelID, structs.KernelRunning, nil)
	old.update(kernelID, structs.KernelTerminated, &zero)
	d := c.waitFor(t, s.Session.ID, terminal)
	if d.Session.Status != structs.SessionTerminated || d.Session.Result != structs.ResultSuccess {
		t.Fatalf("session on the old agent: %s/%s (%s)", d.Session.Status, d.Session.Result, d.Session.StatusInfo)
	}

	// A newer agent's extra fields are ignored; one beyond the policy is refused.
	if _, err := dialOldAgent(t, srv.RPCAddr(), "next-agent").register(map[string]any{"protocol_version": rpc.ProtocolVersion + 1, "future_field": "x"}); err != nil {
		t.Fatalf("an agent one protocol ahead was refused: %v", err)
	}
	for _, tc := range []struct {
		version int
		want    string
	}{
		{99, "agent speaks protocol 99; this server (protocol 2) accepts 1–3: upgrade the servers first, then the agents"},
		{-1, "agent speaks protocol -1; this server (protocol 2) accepts 1–3: upgrade the agent"},
	} {
		a := dialOldAgent(t, srv.RPCAddr(), "bad-agent")
		_, err := a.register(map[string]any{"protocol_version": tc.version})
		if grpcstatus.Code(err) != codes.FailedPrecondition || grpcstatus.Convert(err).Message() != tc.want {
			t.Fatalf("register with protocol %d: %v", tc.version, err)
		}
		st, err := a.watch(ctx, map[string]any{"protocol_version": tc.version})
		if err == nil {
			var raw json.RawMessage
			err = st.RecvMsg(&raw)
		}
		if grpcstatus.Code(err) != codes.FailedPrecondition || grpcstatus.Convert(err).Message() != tc.want {
			t.Fatalf("watch with protocol %d: %v", tc.version, err)
		}
	}
	if _, err := c.client.GetAgent(ctx, "bad-agent"); err == nil {
		t.Fatal("a refused agent was recorded")
	}
}
