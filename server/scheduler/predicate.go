package scheduler

import (
	"fmt"
	"strings"
	"time"

	"github.com/corral-dev/corral/structs"
)

// Verdict is a predicate's answer about one session in one pass. The zero
// Verdict lets the session go on.
type Verdict struct {
	// Reason says why the session may not be placed now; "" when it may.
	Reason string
	// Cancel says the session can never run: the server cancels it with Reason.
	Cancel bool
	// Wait says the session is not ready yet (a start time or a dependency
	// ahead): it stays PENDING with Reason, no attempt is counted and it
	// never blocks the sessions behind it.
	Wait bool
}

// Failed reports whether the verdict keeps the session from being placed.
func (v Verdict) Failed() bool { return v.Reason != "" }

// SessionCheck is what predicates see of one pending session during a
// pass. Predicates must not modify it or keep it after they return.
type SessionCheck struct {
	Session *structs.Session
	// Kernels are the session's kernels in role and index order.
	Kernels []*structs.Kernel
	// Request is the sum of the kernels' positive requests.
	Request structs.Slots
	// Policy is the resource policy of the session's access key; nil: unlimited.
	Policy *structs.ResourcePolicy
	// Usage is what the access key held at the snapshot; nil: nothing.
	Usage *structs.KeyUsage
	// PassSessions counts the key's sessions placed earlier in this pass
	// that Usage.Sessions does not already hold.
	PassSessions int
	// PassOccupied is what the key's sessions placed earlier in this pass occupy.
	PassOccupied structs.Slots
	// Now is the pass's clock (Input.Now).
	Now time.Time
	// Lookup finds a session by ID in any status; nil when unknown.
	Lookup func(id string) *structs.Session
}

// Predicate is one check a pending session must pass before agents are
// chosen for it. Predicates are pure: same check, same verdict.
type Predicate func(c *SessionCheck) Verdict

// DefaultPredicates are the checks of a pass, in the order they run; the
// first that fails decides the session's reason. Dependencies come first so
// that a session whose dependency failed is cancelled even before its start
// time.
var DefaultPredicates = []Predicate{
	CheckDependencies,
	CheckStartsAt,
	CheckMaxKernels,
	CheckConcurrency,
	CheckResourceSlots,
}

// CheckDependencies cancels a session when one of its DependsOn sessions
// ended without success (TERMINATED with a result other than SUCCESS, ERROR
// or CANCELLED), does not exist or is the session itself; it keeps the
// session waiting while one has not ended; it passes once every one is
// TERMINATED with SUCCESS.
func CheckDependencies(c *SessionCheck) Verdict {
	var wait string
	for _, id := range c.Session.DependsOn {
		if id == c.Session.ID {
			return Verdict{Reason: "session depends on itself", Cancel: true}
		}
		var dep *structs.Session
		if c.Lookup != nil {
			dep = c.Lookup(id)
		}
		switch {
		case dep == nil:
			return Verdict{Reason: fmt.Sprintf("dependency %s not found", id), Cancel: true}
		case dep.Status == structs.SessionTerminated && dep.Result == structs.ResultSuccess:
		case dep.Status.Terminal():
			result := dep.Result
			if result == "" {
				result = structs.ResultUndefined
			}
			return Verdict{Reason: fmt.Sprintf("dependency %s ended %s/%s", id, dep.Status, result), Cancel: true}
		case wait == "":
			wait = fmt.Sprintf("waiting for dependency %s (%s)", id, dep.Status)
		}
	}
	if wait != "" {
		return Verdict{Reason: wait, Wait: true}
	}
	return Verdict{}
}

// CheckStartsAt keeps a reserved session PENDING until Now reaches its
// StartsAt. A pass without a clock (zero Now) starts no reserved session.
func CheckStartsAt(c *SessionCheck) Verdict {
	at := c.Session.StartsAt
	if at.IsZero() || !c.Now.Before(at) {
		return Verdict{}
	}
	return Verdict{Reason: fmt.Sprintf("starts_at: reserved to start at %s", at.UTC().Format(time.RFC3339)), Wait: true}
}

// CheckMaxKernels enforces the policy's max_kernels_per_session (the server
// also refuses such sessions at creation; this catches a policy lowered since).
func CheckMaxKernels(c *SessionCheck) Verdict {
	if r := maxKernelsReason(c.Policy, len(c.Kernels)); r != "" {
		return Verdict{Reason: r}
	}
	return Verdict{}
}

// CheckConcurrency enforces the policy's max_concurrent_sessions: the key's
// concurrency set plus the sessions the pass placed for it must stay within
// the limit once the session is counted. A session already in the set (a
// re-queued one) is never counted twice.
func CheckConcurrency(c *SessionCheck) Verdict {
	if r := concurrencyReason(c.Policy, c.Session.AccessKey, c.Usage, c.Session.ID, c.PassSessions); r != "" {
		return Verdict{Reason: r}
	}
	return Verdict{}
}

// CheckResourceSlots enforces the policy's total_resource_slots: what the
// key occupies, plus what the pass placed for it, plus the session's
// request must stay within the limit of every slot the policy names.
func CheckResourceSlots(c *SessionCheck) Verdict {
	var occ structs.Slots
	if c.Usage != nil {
		occ = c.Usage.Occupied
	}
	if r := slotLimitReason(c.Policy, c.Session.AccessKey, occ, c.PassOccupied, c.Request); r != "" {
		return Verdict{Reason: r}
	}
	return Verdict{}
}

// CheckKeyLimits re-checks a placement against an access key's latest
// usage, as the FSM does when it applies a plan: the concurrency set and the
// total resource slots of the policy (nil: unlimited). req is the whole
// session's request (the sum of its kernels). The error wraps
// ErrConcurrencyLimit or ErrSlotLimit.
func CheckKeyLimits(policy *structs.ResourcePolicy, usage *structs.KeyUsage, sessionID string, req structs.Slots) error {
	key := ""
	var occ structs.Slots
	if usage != nil {
		key, occ = usage.AccessKey, usage.Occupied
	}
	if r := concurrencyReason(policy, key, usage, sessionID, 0); r != "" {
		return &PlacementError{Kind: ErrConcurrencyLimit, Msg: r}
	}
	if r := slotLimitReason(policy, key, occ, nil, req); r != "" {
		return &PlacementError{Kind: ErrSlotLimit, Msg: r}
	}
	return nil
}

// CheckPendingLimit is the create-time check of max_pending_sessions:
// pendingCount is how many PENDING sessions the key has before the new one.
// The error wraps ErrPendingLimit.
func CheckPendingLimit(policy *structs.ResourcePolicy, pendingCount int) error {
	if policy == nil || policy.MaxPendingSessions <= 0 || pendingCount < policy.MaxPendingSessions {
		return nil
	}
	return &PlacementError{Kind: ErrPendingLimit, Msg: fmt.Sprintf(
		"max_pending_sessions: the access key already has %d pending sessions; %s allows %d (wait for some to start, or cancel some)",
		pendingCount, policyName(policy), policy.MaxPendingSessions)}
}

func policyName(p *structs.ResourcePolicy) string {
	if p.Name == "" {
		return "its policy"
	}
	return "policy " + p.Name
}

func keyName(key string) string {
	if key == "" {
		return "the access key"
	}
	return "access key " + key
}

func maxKernelsReason(p *structs.ResourcePolicy, n int) string {
	if p == nil || p.MaxKernelsPerSession <= 0 || n <= p.MaxKernelsPerSession {
		return ""
	}
	return fmt.Sprintf("max_kernels_per_session: the session has %d kernels; %s allows %d (recreate it with fewer kernels, or ask an admin to raise the limit)",
		n, policyName(p), p.MaxKernelsPerSession)
}

func concurrencyReason(p *structs.ResourcePolicy, key string, u *structs.KeyUsage, sessionID string, passSessions int) string {
	if p == nil || p.MaxConcurrentSessions <= 0 {
		return ""
	}
	held := passSessions
	if u != nil {
		if u.Sessions[sessionID] {
			return ""
		}
		held += len(u.Sessions)
	}
	if held+1 <= p.MaxConcurrentSessions {
		return ""
	}
	return fmt.Sprintf("max_concurrent_sessions: %s already has %d sessions holding resources; %s allows %d at once (the session starts when one of them ends)",
		keyName(key), held, policyName(p), p.MaxConcurrentSessions)
}

// slotLimitReason checks occupied+pass+req against the policy's slot
// limits, in slot name order; limits of zero or less limit nothing.
func slotLimitReason(p *structs.ResourcePolicy, key string, occupied, pass, req structs.Slots) string {
	if p == nil || len(p.TotalResourceSlots) == 0 {
		return ""
	}
	var over, detail []string
	alone := false
	for _, name := range p.TotalResourceSlots.Names() {
		limit := p.TotalResourceSlots[name]
		need := req[name]
		if limit <= 0 || need <= 0 {
			continue
		}
		held := occupied[name] + pass[name]
		if held+need > limit {
			over = append(over, name)
			detail = append(detail, fmt.Sprintf("holds %s, the session needs %s, limit %s",
				slotString(name, held), slotString(name, need), slotString(name, limit)))
			alone = alone || need > limit
		}
	}
	if len(over) == 0 {
		return ""
	}
	hint := "the session starts when the key's other sessions free enough"
	if alone {
		hint = "the session alone asks for more than the limit: recreate it smaller, or ask an admin to raise the limit"
	}
	return fmt.Sprintf("total_resource_slots: %s would hold more %s than %s allows (%s; %s)",
		keyName(key), strings.Join(over, " and "), policyName(p), strings.Join(detail, "; "), hint)
}

// GroupLimitReason says why a session's request does not fit in its
// resource group's TotalResourceSlots given what the group's sessions hold;
// "" when it fits. The FSM uses it too, against the latest usage.
func GroupLimitReason(group string, limit, held, req structs.Slots) string {
	var over, detail []string
	for _, name := range limit.Names() {
		l, need := limit[name], req[name]
		if l <= 0 || need <= 0 || held[name]+need <= l {
			continue
		}
		over = append(over, name)
		detail = append(detail, fmt.Sprintf("its sessions hold %s, the session needs %s, limit %s",
			slotString(name, held[name]), slotString(name, need), slotString(name, l)))
	}
	if len(over) == 0 {
		return ""
	}
	return fmt.Sprintf("total_resource_slots of resource group %q: the group would hold more %s than it allows (%s; the session starts when others in the group end)",
		group, strings.Join(over, " and "), strings.Join(detail, "; "))
}
