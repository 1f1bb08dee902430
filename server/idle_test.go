package server

import (
	"strings"
	"testing"
	"time"

	"github.com/corral-dev/corral/structs"
)

func TestIdleDecision(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	for _, tc := range []struct {
		name     string
		in       idleInput
		wantLeft time.Duration
		wantDue  bool
	}{
		{"no timeout", idleInput{Now: at(time.Hour), RunningSince: t0}, 0, false},
		{"not running yet", idleInput{Now: at(time.Hour), Timeout: time.Minute}, 0, false},
		{"fresh", idleInput{Now: at(10 * time.Second), RunningSince: t0, Timeout: time.Minute}, 50 * time.Second, false},
		{"idle past the timeout", idleInput{Now: at(61 * time.Second), RunningSince: t0, Timeout: time.Minute}, 0, true},
		{"exactly at the timeout", idleInput{Now: at(time.Minute), RunningSince: t0, Timeout: time.Minute}, 0, false},
		{"recent exec or app", idleInput{Now: at(90 * time.Second), RunningSince: t0, LastTouch: at(60 * time.Second), Timeout: time.Minute}, 30 * time.Second, false},
		{"recent cpu use", idleInput{Now: at(90 * time.Second), RunningSince: t0, LastBusy: at(80 * time.Second), Timeout: time.Minute}, 50 * time.Second, false},
		{"touch before a restart counts from the restart", idleInput{Now: at(90 * time.Second), RunningSince: at(60 * time.Second), LastTouch: at(10 * time.Second), Timeout: time.Minute}, 30 * time.Second, false},
		{"all old", idleInput{Now: at(3 * time.Minute), RunningSince: t0, LastTouch: at(time.Minute), LastBusy: at(30 * time.Second), Timeout: time.Minute}, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			left, due := idleDecision(tc.in)
			if left != tc.wantLeft || due != tc.wantDue {
				t.Fatalf("idleDecision = %s, %v; want %s, %v", left, due, tc.wantLeft, tc.wantDue)
			}
		})
	}
}

func TestKernelBusy(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	sample := func(d time.Duration, cpu time.Duration) *kernelSample {
		return &kernelSample{at: t0.Add(d), cpuNanos: uint64(cpu)}
	}
	for _, tc := range []struct {
		name      string
		prev, cur *kernelSample
		cpuMilli  int64
		gpu       int
		threshold float64
		want      bool
	}{
		{"first sample", nil, sample(time.Second, time.Second), 1000, 0, 5, false},
		{"idle", sample(0, 0), sample(10*time.Second, 10*time.Millisecond), 1000, 0, 5, false},
		{"busy core", sample(0, 0), sample(10*time.Second, 10*time.Second), 1000, 0, 5, true},
		{"6% of one core", sample(0, 0), sample(10*time.Second, 600*time.Millisecond), 1000, 0, 5, true},
		{"4% of one core", sample(0, 0), sample(10*time.Second, 400*time.Millisecond), 1000, 0, 5, false},
		{"4% of a core is 40% of 0.1 cores", sample(0, 0), sample(10*time.Second, 400*time.Millisecond), 100, 0, 5, true},
		{"6% of a core is 0.75% of 8 cores", sample(0, 0), sample(10*time.Second, 600*time.Millisecond), 8000, 0, 5, false},
		{"no cpu slot counts one core", sample(0, 0), sample(10*time.Second, 600*time.Millisecond), 0, 0, 5, true},
		{"higher threshold", sample(0, 0), sample(10*time.Second, 600*time.Millisecond), 1000, 0, 10, false},
		{"gpu busy", nil, sample(time.Second, 0), 1000, 40, 5, true},
		{"gpu idle", sample(0, 0), sample(10*time.Second, 0), 1000, 3, 5, false},
		{"counter reset", sample(0, time.Hour), sample(10*time.Second, time.Second), 1000, 0, 5, false},
		{"same time", sample(0, 0), sample(0, time.Second), 1000, 0, 5, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := kernelBusy(tc.prev, tc.cur, tc.cpuMilli, tc.gpu, tc.threshold); got != tc.want {
				t.Fatalf("kernelBusy = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestIdleReasonAndSampling(t *testing.T) {
	pol := &structs.ResourcePolicy{Name: "nb", IdleTimeout: time.Hour}
	if got, want := idleReason(pol, false), "idle for 1h0m0s (no app traffic, no exec, cpu<5%)"; !strings.Contains(got, want) {
		t.Fatalf("idleReason = %q, want it to contain %q", got, want)
	}
	pol.IdleCPUThreshold = 12.5
	if got, want := idleReason(pol, true), "(no app traffic, no exec, cpu<12.5%, gpu<12.5%)"; !strings.Contains(got, want) {
		t.Fatalf("idleReason = %q, want it to contain %q", got, want)
	}
	if got := idleSampleEvery(time.Hour); got != maxIdleSampleEvery {
		t.Fatalf("idleSampleEvery(1h) = %s, want %s", got, maxIdleSampleEvery)
	}
	if got := idleSampleEvery(8 * time.Second); got != 2*time.Second {
		t.Fatalf("idleSampleEvery(8s) = %s, want 2s", got)
	}
	var a activity
	t0 := time.Now()
	if !a.dueSample("s", t0, time.Second) || a.dueSample("s", t0.Add(time.Second/2), time.Second) || !a.dueSample("s", t0.Add(time.Second), time.Second) {
		t.Fatal("dueSample: want a sample at once, none half an interval later, one a full interval later")
	}
	a.touch("s", t0)
	a.touch("s", t0.Add(-time.Minute)) // an older touch does not move it back
	if !a.get("s").Equal(t0) {
		t.Fatalf("touch went back to %s", a.get("s"))
	}
	a.cpuSample("k", &kernelSample{sessionID: "s", at: t0})
	a.markBusy("s", t0)
	a.forget(map[string]bool{})
	if !a.get("s").IsZero() || !a.lastBusy("s").IsZero() || len(a.samples) != 0 || len(a.sampled) != 0 {
		t.Fatal("forget kept a finished session's activity")
	}
}
