package server_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/coder/websocket"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/structs"
)

// TestExecWebSocketTokenSubprotocol: a browser cannot set Authorization on
// a WebSocket, so it offers its token as a subprotocol; the server takes
// it there only on an upgrade, and never echoes it back.
func TestExecWebSocketTokenSubprotocol(t *testing.T) {
	c := startCluster(t, nil)
	create(t, c, &api.CreateSessionRequest{Name: "nb", Type: "interactive", Command: []string{"sleep", "infinity"}, Resources: small})
	d := c.waitFor(t, "nb", func(d *api.SessionDetail) bool { return d.Session.Status == structs.SessionRunning || terminal(d) })
	if d.Session.Status != structs.SessionRunning {
		t.Fatalf("nb is %s: %s", d.Session.Status, d.Session.StatusInfo)
	}
	wsURL := "ws" + strings.TrimPrefix(c.addr, "http") + "/v1/sessions/nb/exec/ws"
	ctx, cancel := context.WithTimeout(context.Background(), execWait)
	defer cancel()

	conn, resp, err := websocket.Dial(ctx, wsURL, &websocket.DialOptions{Subprotocols: []string{api.ExecProtocol, api.WSTokenProtocolPrefix + c.token}})
	if err != nil {
		t.Fatalf("dial with the token as a subprotocol: %v", err)
	}
	defer conn.CloseNow()
	if got := resp.Header.Get("Sec-WebSocket-Protocol"); got != api.ExecProtocol {
		t.Fatalf("the server chose subprotocol %q, want %q (and never the token)", got, api.ExecProtocol)
	}
	req, _ := json.Marshal(&api.ExecRequest{Command: []string{"sh", "-c", "echo via-subprotocol"}})
	if err := conn.Write(ctx, websocket.MessageText, req); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	for {
		typ, data, err := conn.Read(ctx)
		if err != nil {
			t.Fatalf("reading the exec frames: %v (output %q)", err, out.String())
		}
		if typ == websocket.MessageBinary && len(data) > 0 {
			out.Write(data[1:])
			continue
		}
		var f struct {
			ExitCode *int   `json:"exit_code"`
			Error    string `json:"error"`
		}
		if err := json.Unmarshal(data, &f); err != nil || f.Error != "" || f.ExitCode == nil {
			t.Fatalf("frame %s: %v", data, err)
		}
		if *f.ExitCode != 0 || strings.TrimSpace(out.String()) != "via-subprotocol" {
			t.Fatalf("exit %d, output %q", *f.ExitCode, out.String())
		}
		break
	}

	// A wrong token in the subprotocol is refused before the upgrade.
	_, resp, err = websocket.Dial(ctx, wsURL, &websocket.DialOptions{Subprotocols: []string{api.ExecProtocol, api.WSTokenProtocolPrefix + "AK0000.bad"}})
	if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("a wrong subprotocol token: %v (%v), want 401", err, resp)
	}
	// Outside an upgrade the subprotocol header is no credential.
	r, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.addr+"/v1/agents", nil)
	r.Header.Set("Sec-WebSocket-Protocol", api.WSTokenProtocolPrefix+c.token)
	hr, err := http.DefaultClient.Do(r)
	if err != nil {
		t.Fatal(err)
	}
	hr.Body.Close()
	if hr.StatusCode != http.StatusUnauthorized {
		t.Fatalf("GET /v1/agents with the token only in Sec-WebSocket-Protocol: %s, want 401", hr.Status)
	}
}
