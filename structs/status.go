package structs

import (
	"fmt"
)

// KernelStatus is the lifecycle state of one kernel.
type KernelStatus string

// Kernel statuses, named as in Backend.AI.
const (
	KernelPending     KernelStatus = "PENDING"
	KernelScheduled   KernelStatus = "SCHEDULED"
	KernelPreparing   KernelStatus = "PREPARING"
	KernelPulling     KernelStatus = "PULLING"
	KernelCreating    KernelStatus = "CREATING"
	KernelRunning     KernelStatus = "RUNNING"
	KernelRestarting  KernelStatus = "RESTARTING"
	KernelTerminating KernelStatus = "TERMINATING"
	KernelTerminated  KernelStatus = "TERMINATED"
	KernelError       KernelStatus = "ERROR"
	KernelCancelled   KernelStatus = "CANCELLED"
)

// SessionStatus is the lifecycle state of a session, derived from its kernels.
type SessionStatus string

// Session statuses, named as in Backend.AI.
const (
	SessionPending         SessionStatus = "PENDING"
	SessionScheduled       SessionStatus = "SCHEDULED"
	SessionPreparing       SessionStatus = "PREPARING"
	SessionPulling         SessionStatus = "PULLING"
	SessionRunning         SessionStatus = "RUNNING"
	SessionRunningDegraded SessionStatus = "RUNNING_DEGRADED"
	SessionRestarting      SessionStatus = "RESTARTING"
	SessionTerminating     SessionStatus = "TERMINATING"
	SessionTerminated      SessionStatus = "TERMINATED"
	SessionError           SessionStatus = "ERROR"
	SessionCancelled       SessionStatus = "CANCELLED"
)

// SessionResult is the outcome of a batch session.
type SessionResult string

// Session results.
const (
	ResultUndefined SessionResult = "UNDEFINED"
	ResultSuccess   SessionResult = "SUCCESS"
	ResultFailure   SessionResult = "FAILURE"
)

// kernelTransitions is the one table of legal kernel status changes. A
// placed kernel goes back to PENDING only when its agent is lost and its
// batch session is re-queued (-max-retries).
var kernelTransitions = map[KernelStatus][]KernelStatus{
	KernelPending:     {KernelScheduled, KernelCancelled, KernelError},
	KernelScheduled:   {KernelPreparing, KernelPulling, KernelCreating, KernelRunning, KernelTerminating, KernelTerminated, KernelError, KernelCancelled, KernelPending},
	KernelPreparing:   {KernelPulling, KernelCreating, KernelRunning, KernelTerminating, KernelTerminated, KernelError, KernelPending},
	KernelPulling:     {KernelPreparing, KernelCreating, KernelRunning, KernelTerminating, KernelTerminated, KernelError, KernelPending},
	KernelCreating:    {KernelRunning, KernelTerminating, KernelTerminated, KernelError, KernelPending},
	KernelRunning:     {KernelRestarting, KernelTerminating, KernelTerminated, KernelError, KernelPending},
	KernelRestarting:  {KernelRunning, KernelTerminating, KernelTerminated, KernelError, KernelPending},
	KernelTerminating: {KernelTerminated, KernelError},
	KernelTerminated:  {},
	KernelError:       {KernelTerminated},
	KernelCancelled:   {},
}

// sessionTransitions is the one table of legal session status changes.
var sessionTransitions = map[SessionStatus][]SessionStatus{
	SessionPending:         {SessionScheduled, SessionPreparing, SessionPulling, SessionRunning, SessionTerminating, SessionTerminated, SessionCancelled, SessionError},
	SessionScheduled:       {SessionPreparing, SessionPulling, SessionRunning, SessionTerminating, SessionTerminated, SessionCancelled, SessionError, SessionPending},
	SessionPreparing:       {SessionPulling, SessionRunning, SessionTerminating, SessionTerminated, SessionError, SessionPending},
	SessionPulling:         {SessionPreparing, SessionRunning, SessionTerminating, SessionTerminated, SessionError, SessionPending},
	SessionRunning:         {SessionRunningDegraded, SessionRestarting, SessionTerminating, SessionTerminated, SessionError, SessionPending},
	SessionRunningDegraded: {SessionRunning, SessionRestarting, SessionTerminating, SessionTerminated, SessionError},
	SessionRestarting:      {SessionRunning, SessionRunningDegraded, SessionTerminating, SessionTerminated, SessionError, SessionPending},
	SessionTerminating:     {SessionTerminated, SessionError},
	SessionTerminated:      {},
	SessionError:           {SessionTerminated},
	SessionCancelled:       {},
}

// ErrIllegalTransition is wrapped by every refused status change.
var ErrIllegalTransition = fmt.Errorf("illegal status transition")

// CheckKernelTransition returns nil when a kernel may move from one status to another.
func CheckKernelTransition(from, to KernelStatus) error {
	next, ok := kernelTransitions[from]
	if !ok {
		return fmt.Errorf("%w: unknown kernel status %q", ErrIllegalTransition, from)
	}
	if _, ok := kernelTransitions[to]; !ok {
		return fmt.Errorf("%w: unknown kernel status %q", ErrIllegalTransition, to)
	}
	for _, s := range next {
		if s == to {
			return nil
		}
	}
	return fmt.Errorf("%w: kernel %s -> %s", ErrIllegalTransition, from, to)
}

// CheckSessionTransition returns nil when a session may move from one status to another.
func CheckSessionTransition(from, to SessionStatus) error {
	next, ok := sessionTransitions[from]
	if !ok {
		return fmt.Errorf("%w: unknown session status %q", ErrIllegalTransition, from)
	}
	if _, ok := sessionTransitions[to]; !ok {
		return fmt.Errorf("%w: unknown session status %q", ErrIllegalTransition, to)
	}
	if from == to {
		return nil
	}
	for _, s := range next {
		if s == to {
			return nil
		}
	}
	return fmt.Errorf("%w: session %s -> %s", ErrIllegalTransition, from, to)
}

// Terminal reports whether a kernel in status s will never change again
// (ERROR only moves on to TERMINATED when cleaned up).
func (s KernelStatus) Terminal() bool {
	return s == KernelTerminated || s == KernelError || s == KernelCancelled
}

// Terminal reports whether a session in status s has ended.
func (s SessionStatus) Terminal() bool {
	return s == SessionTerminated || s == SessionError || s == SessionCancelled
}

// Valid reports whether s is a known kernel status.
func (s KernelStatus) Valid() bool { _, ok := kernelTransitions[s]; return ok }

// Valid reports whether s is a known session status.
func (s SessionStatus) Valid() bool { _, ok := sessionTransitions[s]; return ok }

// kernelRank orders kernel statuses by how far along their lifecycle they are.
// RESTARTING ranks below RUNNING so that a session with one kernel restarting
// is RESTARTING whatever the order of its kernels.
var kernelRank = map[KernelStatus]int{
	KernelPending: 0, KernelScheduled: 1, KernelPreparing: 2, KernelPulling: 3,
	KernelCreating: 4, KernelRestarting: 5, KernelRunning: 6, KernelTerminating: 7,
	KernelTerminated: 8, KernelCancelled: 8, KernelError: 9,
}

// kernelToSession maps a kernel status to the session status it implies.
var kernelToSession = map[KernelStatus]SessionStatus{
	KernelPending: SessionPending, KernelScheduled: SessionScheduled,
	KernelPreparing: SessionPreparing, KernelPulling: SessionPulling,
	KernelCreating: SessionPreparing, KernelRunning: SessionRunning,
	KernelRestarting: SessionRestarting, KernelTerminating: SessionTerminating,
	KernelTerminated: SessionTerminated, KernelError: SessionError,
	KernelCancelled: SessionCancelled,
}

// DeriveSessionStatus computes a session's status from its kernels' statuses:
// the least advanced one, except that any kernel in ERROR makes the session
// ERROR, and a session whose kernels were all cancelled is CANCELLED.
func DeriveSessionStatus(kernels []KernelStatus) SessionStatus {
	if len(kernels) == 0 {
		return SessionPending
	}
	least := kernels[0]
	allCancelled := true
	for _, k := range kernels {
		if k == KernelError {
			return SessionError
		}
		if k != KernelCancelled {
			allCancelled = false
		}
		if kernelRank[k] < kernelRank[least] {
			least = k
		}
	}
	if allCancelled {
		return SessionCancelled
	}
	if least == KernelCancelled {
		return SessionTerminated
	}
	return kernelToSession[least]
}
