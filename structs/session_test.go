package structs

import (
	"errors"
	"reflect"
	"testing"
	"time"
)

var t0 = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

func TestKernelSetStatus(t *testing.T) {
	tests := []struct {
		name  string
		from  KernelStatus
		steps []KernelStatus
		fail  KernelStatus // a final illegal step, "" for none
	}{
		{"happy path", KernelPending, []KernelStatus{KernelScheduled, KernelPreparing, KernelPulling, KernelCreating, KernelRunning, KernelTerminating, KernelTerminated}, ""},
		{"restart", KernelRunning, []KernelStatus{KernelRestarting, KernelRunning}, KernelCancelled},
		{"cancel pending", KernelPending, []KernelStatus{KernelCancelled}, KernelScheduled},
		{"error cleanup", KernelRunning, []KernelStatus{KernelError, KernelTerminated}, KernelRunning},
		{"pending to running", KernelPending, nil, KernelRunning},
		{"unknown target", KernelPending, nil, "BOGUS"},
		{"same status", KernelRunning, nil, KernelRunning},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := &Kernel{ID: "k1", Status: tt.from}
			var want []StatusChange
			for i, to := range tt.steps {
				now := t0.Add(time.Duration(i) * time.Second)
				info := "step " + string(to)
				if err := k.SetStatus(to, info, now); err != nil {
					t.Fatalf("SetStatus(%s): %v", to, err)
				}
				want = append(want, StatusChange{Status: string(to), Info: info, Time: now})
				if k.Status != to || k.StatusInfo != info {
					t.Fatalf("after SetStatus(%s): status %s info %q", to, k.Status, k.StatusInfo)
				}
			}
			if !reflect.DeepEqual(k.History, want) {
				t.Fatalf("history = %+v, want %+v", k.History, want)
			}
			if tt.fail == "" {
				return
			}
			before := *k
			before.History = append([]StatusChange(nil), k.History...)
			err := k.SetStatus(tt.fail, "should not stick", t0.Add(time.Hour))
			if !errors.Is(err, ErrIllegalTransition) {
				t.Fatalf("SetStatus(%s) from %s: got %v, want ErrIllegalTransition", tt.fail, k.Status, err)
			}
			if !reflect.DeepEqual(*k, before) {
				t.Fatalf("a refused SetStatus changed the kernel: %+v, was %+v", k, before)
			}
		})
	}
}

func TestSessionSetStatus(t *testing.T) {
	s := &Session{ID: "s1", Status: SessionPending}
	steps := []struct {
		to   SessionStatus
		info string
	}{
		{SessionPending, "no agent has room"},    // same status, new reason
		{SessionScheduled, "scheduled"},          //
		{SessionRunning, "kernel main1 RUNNING"}, //
		{SessionTerminated, "exited"},            // terminal: sets TerminatedAt
		{SessionTerminated, "cleaned up"},        // same status, new reason
	}
	var want []StatusChange
	for i, st := range steps {
		now := t0.Add(time.Duration(i) * time.Minute)
		if err := s.SetStatus(st.to, st.info, now); err != nil {
			t.Fatalf("SetStatus(%s): %v", st.to, err)
		}
		want = append(want, StatusChange{Status: string(st.to), Info: st.info, Time: now})
		if s.Status != st.to || s.StatusInfo != st.info {
			t.Fatalf("after SetStatus(%s): status %s info %q", st.to, s.Status, s.StatusInfo)
		}
	}
	if !reflect.DeepEqual(s.History, want) {
		t.Fatalf("history = %+v, want %+v", s.History, want)
	}
	if wantAt := t0.Add(3 * time.Minute); !s.TerminatedAt.Equal(wantAt) {
		t.Errorf("TerminatedAt = %v, want the first terminal change %v", s.TerminatedAt, wantAt)
	}

	// The same status with the same reason records nothing.
	if err := s.SetStatus(SessionTerminated, "cleaned up", t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if len(s.History) != len(want) {
		t.Errorf("repeating status and reason added a history entry: %+v", s.History)
	}

	for _, to := range []SessionStatus{SessionRunning, SessionPending, SessionCancelled, "BOGUS"} {
		before := *s
		before.History = append([]StatusChange(nil), s.History...)
		err := s.SetStatus(to, "should not stick", t0.Add(2*time.Hour))
		if !errors.Is(err, ErrIllegalTransition) {
			t.Errorf("TERMINATED -> %s: got %v, want ErrIllegalTransition", to, err)
		}
		if !reflect.DeepEqual(*s, before) {
			t.Errorf("a refused SetStatus(%s) changed the session: %+v, was %+v", to, *s, before)
		}
	}
}

func TestSessionSetStatusUnknownCurrent(t *testing.T) {
	s := &Session{ID: "s1", Status: "BOGUS"}
	if err := s.SetStatus("BOGUS", "why", t0); !errors.Is(err, ErrIllegalTransition) {
		t.Fatalf("BOGUS -> BOGUS: got %v, want ErrIllegalTransition", err)
	}
	if len(s.History) != 0 || s.StatusInfo != "" {
		t.Fatalf("refused change was recorded: %+v", s)
	}
}

func TestSessionCancelledTerminatedAt(t *testing.T) {
	s := &Session{ID: "s1", Status: SessionPending}
	if err := s.SetStatus(SessionCancelled, "user", t0); err != nil {
		t.Fatal(err)
	}
	if !s.TerminatedAt.Equal(t0) {
		t.Errorf("TerminatedAt = %v, want %v", s.TerminatedAt, t0)
	}
}

func TestHoldsSlots(t *testing.T) {
	tests := []struct {
		agent  string
		status KernelStatus
		want   bool
	}{
		{"", KernelPending, false},
		{"", KernelRunning, false},
		{"a1", KernelScheduled, true},
		{"a1", KernelPreparing, true},
		{"a1", KernelPulling, true},
		{"a1", KernelCreating, true},
		{"a1", KernelRunning, true},
		{"a1", KernelRestarting, true},
		{"a1", KernelTerminating, true},
		{"a1", KernelTerminated, false},
		{"a1", KernelError, false},
		{"a1", KernelCancelled, false},
	}
	for _, tt := range tests {
		k := &Kernel{AgentID: tt.agent, Status: tt.status}
		if got := k.HoldsSlots(); got != tt.want {
			t.Errorf("agent %q status %s: HoldsSlots() = %v, want %v", tt.agent, tt.status, got, tt.want)
		}
	}
}

func TestCopiesAreDeep(t *testing.T) {
	code := 3
	k := &Kernel{
		ID: "k1", Command: []string{"sleep", "1"}, Env: map[string]string{"A": "1"},
		Resources: Slots{SlotCPU: Whole(1)}, ExitCode: &code,
		History: []StatusChange{{Status: "PENDING"}},
	}
	c := k.Copy()
	if !reflect.DeepEqual(k, c) {
		t.Fatalf("copy differs: %+v vs %+v", c, k)
	}
	c.Command[0] = "x"
	c.Env["A"] = "2"
	c.Resources[SlotCPU] = Whole(2)
	*c.ExitCode = 4
	c.History[0].Status = "RUNNING"
	if k.Command[0] != "sleep" || k.Env["A"] != "1" || k.Resources[SlotCPU] != Whole(1) || *k.ExitCode != 3 || k.History[0].Status != "PENDING" {
		t.Fatalf("modifying the copy changed the original: %+v", k)
	}

	s := &Session{ID: "s1", KernelIDs: []string{"k1"}, History: []StatusChange{{Status: "PENDING"}}}
	sc := s.Copy()
	sc.KernelIDs[0] = "x"
	sc.History[0].Status = "x"
	if s.KernelIDs[0] != "k1" || s.History[0].Status != "PENDING" {
		t.Fatalf("modifying the session copy changed the original: %+v", s)
	}

	a := &Agent{ID: "a1", Drivers: []string{"exec"}, Capacity: Slots{SlotCPU: Whole(4)}, Occupied: Slots{SlotCPU: Whole(1)}}
	ac := a.Copy()
	ac.Drivers[0] = "x"
	ac.Capacity[SlotCPU] = 0
	ac.Occupied[SlotCPU] = 0
	if a.Drivers[0] != "exec" || a.Capacity[SlotCPU] != Whole(4) || a.Occupied[SlotCPU] != Whole(1) {
		t.Fatalf("modifying the agent copy changed the original: %+v", a)
	}
}

func TestAgentHasDriverAndFree(t *testing.T) {
	a := &Agent{Drivers: []string{"exec", "runc"}, Capacity: Slots{SlotCPU: Whole(4), SlotMem: Whole(1 << 30)}, Occupied: Slots{SlotCPU: 1500}}
	if !a.HasDriver("runc") || a.HasDriver("vm") || a.HasDriver("") {
		t.Errorf("HasDriver wrong for drivers %v", a.Drivers)
	}
	if want := (Slots{SlotCPU: 2500, SlotMem: Whole(1 << 30)}); !a.Free().Equal(want) {
		t.Errorf("Free() = %v, want %v", a.Free(), want)
	}
}
