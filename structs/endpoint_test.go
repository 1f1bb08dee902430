package structs

import (
	"strings"
	"testing"
	"time"
)

func TestDecideScale(t *testing.T) {
	now := time.Date(2026, 12, 5, 10, 0, 0, 0, time.UTC)
	base := ScaleInput{Now: now, Current: 1, Min: 1, Max: 3, TargetRPS: 20, ScaleUpCooldown: 10 * time.Second, ScaleDownDelay: 30 * time.Second}
	tests := []struct {
		name     string
		in       func(ScaleInput) ScaleInput
		want     int
		lowSince time.Time
		reason   string
	}{
		{"no target: nothing", func(in ScaleInput) ScaleInput { in.TargetRPS = 0; in.RPS = 500; return in }, 1, time.Time{}, ""},
		{"load fits", func(in ScaleInput) ScaleInput { in.RPS = 20; return in }, 1, time.Time{}, ""},
		{"up to what the load needs", func(in ScaleInput) ScaleInput { in.RPS = 41; return in }, 3, time.Time{}, "scale up 1 → 3"},
		{"up capped at max", func(in ScaleInput) ScaleInput { in.RPS = 1000; return in }, 3, time.Time{}, "scale up 1 → 3"},
		{"up held by the cooldown", func(in ScaleInput) ScaleInput {
			in.RPS = 41
			in.LastScaleUp = now.Add(-5 * time.Second)
			return in
		}, 1, time.Time{}, "last scale-up was 5s ago"},
		{"up after the cooldown", func(in ScaleInput) ScaleInput {
			in.RPS = 41
			in.LastScaleUp = now.Add(-11 * time.Second)
			return in
		}, 3, time.Time{}, "scale up"},
		{"down waits: low starts now", func(in ScaleInput) ScaleInput { in.Current = 3; in.RPS = 0; return in }, 3, now, "scaling down after 30s"},
		{"down waits: low for less than the delay", func(in ScaleInput) ScaleInput {
			in.Current, in.RPS, in.LowSince = 3, 0, now.Add(-10*time.Second)
			return in
		}, 3, now.Add(-10 * time.Second), "for 10s"},
		{"down after the delay, to min", func(in ScaleInput) ScaleInput {
			in.Current, in.RPS, in.LowSince = 3, 0, now.Add(-31*time.Second)
			return in
		}, 1, time.Time{}, "scale down 3 → 1"},
		{"down to what the load still needs", func(in ScaleInput) ScaleInput {
			in.Current, in.RPS, in.LowSince = 3, 25, now.Add(-31*time.Second)
			return in
		}, 2, time.Time{}, "scale down 3 → 2"},
		{"min holds", func(in ScaleInput) ScaleInput {
			in.Min, in.Current, in.RPS, in.LowSince = 2, 2, 0, now.Add(-time.Hour)
			return in
		}, 2, time.Time{}, ""},
		{"below min rises to min", func(in ScaleInput) ScaleInput { in.Min, in.Current = 2, 1; return in }, 2, time.Time{}, "scale up 1 → 2"},
		{"concurrency target", func(in ScaleInput) ScaleInput {
			in.TargetRPS, in.TargetConcurrency, in.Concurrency = 0, 4, 9
			return in
		}, 3, time.Time{}, "requests in flight"},
		{"exact multiple needs no extra replica", func(in ScaleInput) ScaleInput { in.RPS = 40; return in }, 2, time.Time{}, "scale up 1 → 2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := DecideScale(tt.in(base))
			if got.Replicas != tt.want {
				t.Errorf("replicas %d, want %d (%s)", got.Replicas, tt.want, got.Reason)
			}
			if !got.LowSince.Equal(tt.lowSince) {
				t.Errorf("low since %v, want %v", got.LowSince, tt.lowSince)
			}
			if !strings.Contains(got.Reason, tt.reason) {
				t.Errorf("reason %q, want it to contain %q", got.Reason, tt.reason)
			}
		})
	}
}

func TestEndpointCheckScale(t *testing.T) {
	ok := Endpoint{Replicas: 2, MinReplicas: 1, MaxReplicas: 8, TargetRPS: 50}
	if err := ok.CheckScale(); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []Endpoint{
		{Replicas: 2, MinReplicas: 3, MaxReplicas: 2},
		{Replicas: 9, MinReplicas: 1, MaxReplicas: 8},
		{Replicas: 1, MinReplicas: 1, MaxReplicas: 1, TargetRPS: 1, TargetConcurrency: 1},
		{Replicas: 1, MinReplicas: 1, MaxReplicas: MaxEndpointReplicas + 1},
		{Replicas: -1},
	} {
		if err := bad.CheckScale(); err == nil {
			t.Errorf("%+v passed", bad)
		}
	}
}
