package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/structs"
)

// TestRenderIdleAndLifetime: session status shows the remaining idle time
// and lifetime the server computed, and nothing without limits.
func TestRenderIdleAndLifetime(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	d := &api.SessionDetail{Session: &structs.Session{ID: "33333333-cccc", Type: "interactive", Status: "RUNNING", CreatedAt: now},
		IdleRemaining: "42m10s", LifetimeRemaining: "11h2m0s"}
	var b bytes.Buffer
	if err := renderSessionDetail(&b, d, nil, now); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Idle timeout in:", "42m10s (idle: no exec, no app traffic, no CPU/GPU use)", "Lifetime left:", "11h2m0s"} {
		if !strings.Contains(b.String(), want) {
			t.Fatalf("session status lacks %q:\n%s", want, b.String())
		}
	}
	d.IdleRemaining, d.LifetimeRemaining = "", ""
	b.Reset()
	if err := renderSessionDetail(&b, d, nil, now); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(b.String(), "Idle timeout") || strings.Contains(b.String(), "Lifetime left") {
		t.Fatalf("limits shown for a session without any:\n%s", b.String())
	}
}
