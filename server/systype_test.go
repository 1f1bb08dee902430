package server_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/structs"
)

// TestSessionTypes: system sessions run like interactive ones (no result);
// an unknown type, and inference (made by endpoints), are refused with the
// valid types named.
func TestSessionTypes(t *testing.T) {
	c := startCluster(t, nil)
	ctx := context.Background()
	d := create(t, c, &api.CreateSessionRequest{Type: "system", Command: []string{"sleep", "infinity"}, Resources: small})
	d = c.waitFor(t, d.Session.ID, func(d *api.SessionDetail) bool { return d.Session.Status == structs.SessionRunning || terminal(d) })
	if d.Session.Status != structs.SessionRunning || d.Session.Type != structs.SessionTypeSystem {
		t.Fatalf("system session: %s %s %q", d.Session.Type, d.Session.Status, d.Session.StatusInfo)
	}
	if _, err := c.client.DestroySession(ctx, d.Session.ID); err != nil {
		t.Fatal(err)
	}
	d = c.waitFor(t, d.Session.ID, terminal)
	if d.Session.Status != structs.SessionTerminated || d.Session.Result != structs.ResultUndefined {
		t.Fatalf("destroyed system session: %s result %s", d.Session.Status, d.Session.Result)
	}
	for typ, want := range map[string]string{"party": "use batch, interactive or system", "inference": "endpoints"} {
		_, err := c.client.CreateSession(ctx, &api.CreateSessionRequest{Type: structs.SessionType(typ), Command: []string{"true"}, Resources: small})
		var apiErr *api.Error
		if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusBadRequest || !strings.Contains(apiErr.Message, want) {
			t.Errorf("type %q: %v, want 400 saying %q", typ, err, want)
		}
	}
}
