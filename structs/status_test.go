package structs

import (
	"errors"
	"testing"
)

var allKernelStatuses = []KernelStatus{
	KernelPending, KernelScheduled, KernelPreparing, KernelPulling, KernelCreating,
	KernelRunning, KernelRestarting, KernelTerminating, KernelTerminated,
	KernelError, KernelCancelled,
}

var allSessionStatuses = []SessionStatus{
	SessionPending, SessionScheduled, SessionPreparing, SessionPulling,
	SessionRunning, SessionRunningDegraded, SessionRestarting, SessionTerminating,
	SessionTerminated, SessionError, SessionCancelled,
}

func TestTransitionTablesAreComplete(t *testing.T) {
	if len(kernelTransitions) != len(allKernelStatuses) {
		t.Errorf("kernel table has %d statuses, want %d", len(kernelTransitions), len(allKernelStatuses))
	}
	for _, s := range allKernelStatuses {
		if !s.Valid() {
			t.Errorf("kernel status %s is missing from the transition table", s)
		}
		if _, ok := kernelRank[s]; !ok {
			t.Errorf("kernel status %s has no rank", s)
		}
		if _, ok := kernelToSession[s]; !ok {
			t.Errorf("kernel status %s maps to no session status", s)
		}
		for _, to := range kernelTransitions[s] {
			if !to.Valid() {
				t.Errorf("kernel %s -> %s: target is not a known status", s, to)
			}
		}
	}
	if len(sessionTransitions) != len(allSessionStatuses) {
		t.Errorf("session table has %d statuses, want %d", len(sessionTransitions), len(allSessionStatuses))
	}
	for _, s := range allSessionStatuses {
		if !s.Valid() {
			t.Errorf("session status %s is missing from the transition table", s)
		}
		for _, to := range sessionTransitions[s] {
			if !to.Valid() {
				t.Errorf("session %s -> %s: target is not a known status", s, to)
			}
		}
	}
	for k, s := range kernelToSession {
		if !s.Valid() {
			t.Errorf("kernel %s maps to unknown session status %q", k, s)
		}
	}
}

func TestKernelTransitions(t *testing.T) {
	// Every move the table lists is legal; every other move between known
	// statuses is illegal.
	for _, from := range allKernelStatuses {
		legal := map[KernelStatus]bool{}
		for _, to := range kernelTransitions[from] {
			legal[to] = true
		}
		for _, to := range allKernelStatuses {
			err := CheckKernelTransition(from, to)
			if legal[to] && err != nil {
				t.Errorf("%s -> %s: listed in the table but refused: %v", from, to, err)
			}
			if !legal[to] && !errors.Is(err, ErrIllegalTransition) {
				t.Errorf("%s -> %s: not in the table, got %v, want ErrIllegalTransition", from, to, err)
			}
		}
	}

	tests := []struct {
		from, to KernelStatus
		ok       bool
	}{
		{KernelPending, KernelScheduled, true},
		{KernelPending, KernelCancelled, true},
		{KernelScheduled, KernelPending, true},
		{KernelRunning, KernelRestarting, true},
		{KernelError, KernelTerminated, true},
		{KernelPending, KernelRunning, false},
		{KernelPending, KernelTerminated, false},
		{KernelTerminated, KernelRunning, false},
		{KernelTerminated, KernelTerminated, false},
		{KernelCancelled, KernelScheduled, false},
		{KernelCancelled, KernelPending, false},
		{KernelError, KernelRunning, false},
		{KernelRunning, KernelPending, true}, // re-queued after agent loss
		{KernelTerminated, KernelPending, false},
		{KernelRunning, KernelRunning, false},
		{KernelRunning, KernelCancelled, false},
		{KernelTerminating, KernelRunning, false},
		{"BOGUS", KernelRunning, false},
		{KernelPending, "BOGUS", false},
		{"BOGUS", "BOGUS", false},
		{"", KernelPending, false},
	}
	for _, tt := range tests {
		err := CheckKernelTransition(tt.from, tt.to)
		if tt.ok && err != nil {
			t.Errorf("kernel %q -> %q: unexpected error %v", tt.from, tt.to, err)
		}
		if !tt.ok && !errors.Is(err, ErrIllegalTransition) {
			t.Errorf("kernel %q -> %q: got %v, want ErrIllegalTransition", tt.from, tt.to, err)
		}
	}
}

func TestSessionTransitions(t *testing.T) {
	for _, from := range allSessionStatuses {
		legal := map[SessionStatus]bool{from: true} // same status: a new reason only
		for _, to := range sessionTransitions[from] {
			legal[to] = true
		}
		for _, to := range allSessionStatuses {
			err := CheckSessionTransition(from, to)
			if legal[to] && err != nil {
				t.Errorf("%s -> %s: legal but refused: %v", from, to, err)
			}
			if !legal[to] && !errors.Is(err, ErrIllegalTransition) {
				t.Errorf("%s -> %s: not in the table, got %v, want ErrIllegalTransition", from, to, err)
			}
		}
	}

	tests := []struct {
		from, to SessionStatus
		ok       bool
	}{
		{SessionPending, SessionScheduled, true},
		{SessionPending, SessionPending, true},
		{SessionScheduled, SessionPending, true},
		{SessionRunning, SessionRunningDegraded, true},
		{SessionError, SessionTerminated, true},
		{SessionTerminated, SessionTerminated, true},
		{SessionTerminated, SessionRunning, false},
		{SessionCancelled, SessionScheduled, false},
		{SessionCancelled, SessionPending, false},
		{SessionError, SessionRunning, false},
		{SessionRunning, SessionPending, true}, // re-queued after agent loss
		{SessionTerminated, SessionPending, false},
		{SessionRunning, SessionCancelled, false},
		{SessionTerminating, SessionRunning, false},
		{"BOGUS", SessionRunning, false},
		{SessionPending, "BOGUS", false},
		{"BOGUS", "BOGUS", false},
		{"", "", false},
	}
	for _, tt := range tests {
		err := CheckSessionTransition(tt.from, tt.to)
		if tt.ok && err != nil {
			t.Errorf("session %q -> %q: unexpected error %v", tt.from, tt.to, err)
		}
		if !tt.ok && !errors.Is(err, ErrIllegalTransition) {
			t.Errorf("session %q -> %q: got %v, want ErrIllegalTransition", tt.from, tt.to, err)
		}
	}
}

func TestTerminal(t *testing.T) {
	for _, s := range allKernelStatuses {
		want := s == KernelTerminated || s == KernelError || s == KernelCancelled
		if got := s.Terminal(); got != want {
			t.Errorf("kernel %s Terminal() = %v, want %v", s, got, want)
		}
	}
	for _, s := range allSessionStatuses {
		want := s == SessionTerminated || s == SessionError || s == SessionCancelled
		if got := s.Terminal(); got != want {
			t.Errorf("session %s Terminal() = %v, want %v", s, got, want)
		}
	}
	if KernelStatus("BOGUS").Valid() || SessionStatus("").Valid() {
		t.Error("unknown statuses report Valid")
	}
}

func TestDeriveSessionStatus(t *testing.T) {
	tests := []struct {
		name    string
		kernels []KernelStatus
		want    SessionStatus
	}{
		{"no kernels", nil, SessionPending},
		{"one pending", []KernelStatus{KernelPending}, SessionPending},
		{"one running", []KernelStatus{KernelRunning}, SessionRunning},
		{"least advanced wins", []KernelStatus{KernelRunning, KernelScheduled, KernelPulling}, SessionScheduled},
		{"least advanced wins, other order", []KernelStatus{KernelPulling, KernelRunning, KernelScheduled}, SessionScheduled},
		{"preparing and pulling", []KernelStatus{KernelPulling, KernelPreparing}, SessionPreparing},
		{"creating maps to preparing", []KernelStatus{KernelCreating}, SessionPreparing},
		{"creating with running", []KernelStatus{KernelRunning, KernelCreating}, SessionPreparing},
		{"pulling below creating", []KernelStatus{KernelCreating, KernelPulling}, SessionPulling},
		{"restarting", []KernelStatus{KernelRestarting}, SessionRestarting},
		{"running then restarting", []KernelStatus{KernelRunning, KernelRestarting}, SessionRestarting},
		{"restarting then running", []KernelStatus{KernelRestarting, KernelRunning}, SessionRestarting},
		{"terminating", []KernelStatus{KernelTerminating, KernelTerminated}, SessionTerminating},
		{"running and terminated", []KernelStatus{KernelTerminated, KernelRunning}, SessionRunning},
		{"any error", []KernelStatus{KernelRunning, KernelError, KernelRunning}, SessionError},
		{"error with pending", []KernelStatus{KernelPending, KernelError}, SessionError},
		{"error with cancelled", []KernelStatus{KernelCancelled, KernelError}, SessionError},
		{"error with terminated", []KernelStatus{KernelTerminated, KernelError}, SessionError},
		{"all cancelled", []KernelStatus{KernelCancelled, KernelCancelled}, SessionCancelled},
		{"one cancelled", []KernelStatus{KernelCancelled}, SessionCancelled},
		{"cancelled then terminated", []KernelStatus{KernelCancelled, KernelTerminated}, SessionTerminated},
		{"terminated then cancelled", []KernelStatus{KernelTerminated, KernelCancelled}, SessionTerminated},
		{"all terminated", []KernelStatus{KernelTerminated, KernelTerminated}, SessionTerminated},
		{"scheduled and cancelled", []KernelStatus{KernelCancelled, KernelScheduled}, SessionScheduled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := DeriveSessionStatus(tt.kernels); got != tt.want {
				t.Errorf("DeriveSessionStatus(%v) = %s, want %s", tt.kernels, got, tt.want)
			}
		})
	}
}

// TestDeriveSessionStatusOrderIndependent checks every pair of kernel
// statuses in both orders: the order of a session's kernels must not matter.
func TestDeriveSessionStatusOrderIndependent(t *testing.T) {
	for _, a := range allKernelStatuses {
		for _, b := range allKernelStatuses {
			ab := DeriveSessionStatus([]KernelStatus{a, b})
			ba := DeriveSessionStatus([]KernelStatus{b, a})
			if ab != ba {
				t.Errorf("[%s %s] -> %s but [%s %s] -> %s", a, b, ab, b, a, ba)
			}
			if !ab.Valid() {
				t.Errorf("[%s %s] -> unknown session status %q", a, b, ab)
			}
		}
	}
}
