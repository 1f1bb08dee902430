package structs

import (
	"fmt"
	"math"
	"time"
)

// Endpoint is an inference service: replica sessions of type inference
// that run the same image and serve HTTP on one port, kept at a desired
// count by the leader and reached through the router every server serves
// at /v1/endpoints/{name}/... (server/endpoints*.go, docs/endpoints.md).
type Endpoint struct {
	// Name is unique in the cluster; it is part of the router's URL.
	Name string `json:"name"`
	// AccessKey and Owner are the key the endpoint was created with and
	// its user: replicas are sessions of that key, under its policy.
	AccessKey string `json:"access_key"`
	Owner     string `json:"owner"`

	// The replicas' spec: what each replica session runs.
	Driver        string            `json:"driver"`
	Image         string            `json:"image,omitempty"`
	Command       []string          `json:"command,omitempty"`
	Env           map[string]string `json:"env,omitempty"`
	Resources     Slots             `json:"resources,omitempty"`
	ResourceGroup string            `json:"resource_group,omitempty"`
	// Port is the replicas' HTTP port; HealthPath the path of their
	// health check (a GET answered 2xx when the replica is ready).
	Port       int    `json:"port"`
	HealthPath string `json:"health_path"`

	// Replicas is the desired count now (set by the user, then by the
	// autoscaler between MinReplicas and MaxReplicas when a target is set).
	Replicas    int `json:"replicas"`
	MinReplicas int `json:"min_replicas"`
	MaxReplicas int `json:"max_replicas"`
	// TargetRPS or TargetConcurrency (at most one) turns autoscaling on:
	// the desired count is the observed request rate (or mean in-flight
	// requests) over the target, within min and max.
	TargetRPS         float64 `json:"target_rps,omitempty"`
	TargetConcurrency float64 `json:"target_concurrency,omitempty"`
	// ScaleUpCooldown and ScaleDownDelay: the autoscaler adds replicas at
	// most once per ScaleUpCooldown and removes some only after the load
	// asked for fewer for ScaleDownDelay.
	ScaleUpCooldown time.Duration `json:"scale_up_cooldown,omitempty"`
	ScaleDownDelay  time.Duration `json:"scale_down_delay,omitempty"`

	// Public endpoints take requests without a token; others want the
	// endpoint's token (TokenHash is its SHA-256) or the owner's key.
	Public    bool   `json:"public,omitempty"`
	TokenHash string `json:"token_hash,omitempty"`

	// Generation counts spec changes (image, command...): replicas of an
	// older generation are replaced one by one (rolling update).
	Generation int `json:"generation"`
	// Draining maps replica session IDs to when they were taken out of
	// routing; the leader destroys them once their requests drained.
	Draining map[string]time.Time `json:"draining,omitempty"`
	// Events are the last scale and replacement events, newest last.
	Events []EndpointEvent `json:"events,omitempty"`

	CreatedAt   time.Time `json:"created_at"`
	CreateIndex uint64    `json:"create_index"`
	ModifyIndex uint64    `json:"modify_index"`
}

// EndpointEvent records one decision about an endpoint's replicas.
type EndpointEvent struct {
	Time time.Time `json:"time"`
	// Kind is "scale", "replace", "update" or "drain".
	Kind string `json:"kind"`
	From int    `json:"from,omitempty"`
	To   int    `json:"to,omitempty"`
	// Reason says why, with the figures that decided it.
	Reason string `json:"reason"`
}

// MaxEndpointEvents bounds an endpoint's event list.
const MaxEndpointEvents = 50

// Default autoscaling delays.
const (
	DefaultScaleUpCooldown = 10 * time.Second
	DefaultScaleDownDelay  = 60 * time.Second
)

// Copy returns a deep copy of e, safe to modify.
func (e *Endpoint) Copy() *Endpoint {
	c := *e
	c.Command = append([]string(nil), e.Command...)
	if e.Env != nil {
		c.Env = make(map[string]string, len(e.Env))
		for k, v := range e.Env {
			c.Env[k] = v
		}
	}
	if e.Resources != nil {
		c.Resources = e.Resources.Copy()
	}
	if e.Draining != nil {
		c.Draining = make(map[string]time.Time, len(e.Draining))
		for k, v := range e.Draining {
			c.Draining[k] = v
		}
	}
	c.Events = append([]EndpointEvent(nil), e.Events...)
	return &c
}

// AddEvent appends an event, keeping the last MaxEndpointEvents.
func (e *Endpoint) AddEvent(ev EndpointEvent) {
	e.Events = append(e.Events, ev)
	if n := len(e.Events); n > MaxEndpointEvents {
		e.Events = append([]EndpointEvent(nil), e.Events[n-MaxEndpointEvents:]...)
	}
}

// Autoscaled reports whether a target drives the replica count.
func (e *Endpoint) Autoscaled() bool { return e.TargetRPS > 0 || e.TargetConcurrency > 0 }

// CheckScale validates the replica counts and targets; the error says
// what is wrong.
func (e *Endpoint) CheckScale() error {
	if e.MinReplicas < 0 || e.MaxReplicas < 0 || e.Replicas < 0 {
		return fmt.Errorf("replica counts must not be negative (replicas %d, min %d, max %d)", e.Replicas, e.MinReplicas, e.MaxReplicas)
	}
	if e.MaxReplicas > MaxEndpointReplicas {
		return fmt.Errorf("max replicas %d is above the limit of %d", e.MaxReplicas, MaxEndpointReplicas)
	}
	if e.MinReplicas > e.MaxReplicas {
		return fmt.Errorf("min replicas %d is above max replicas %d", e.MinReplicas, e.MaxReplicas)
	}
	if e.Replicas < e.MinReplicas || e.Replicas > e.MaxReplicas {
		return fmt.Errorf("replicas %d is outside [min %d, max %d]", e.Replicas, e.MinReplicas, e.MaxReplicas)
	}
	if e.TargetRPS < 0 || e.TargetConcurrency < 0 || math.IsNaN(e.TargetRPS) || math.IsNaN(e.TargetConcurrency) {
		return fmt.Errorf("targets must be positive numbers")
	}
	if e.TargetRPS > 0 && e.TargetConcurrency > 0 {
		return fmt.Errorf("give either a target request rate or a target concurrency, not both")
	}
	if e.ScaleUpCooldown < 0 || e.ScaleDownDelay < 0 {
		return fmt.Errorf("scale delays must not be negative")
	}
	return nil
}

// MaxEndpointReplicas bounds an endpoint's replica count.
const MaxEndpointReplicas = 256

// ScaleInput is what the autoscaler sees of one endpoint at one moment.
type ScaleInput struct {
	Now     time.Time
	Current int // the desired count so far
	Min     int
	Max     int
	// TargetRPS or TargetConcurrency: the per-replica target.
	TargetRPS         float64
	TargetConcurrency float64
	// RPS and Concurrency are the observed load (all servers' routers).
	RPS         float64
	Concurrency float64
	// LastScaleUp is when the count last went up; LowSince is since when
	// the load has asked for fewer replicas than Current (zero: it does
	// not).
	LastScaleUp     time.Time
	LowSince        time.Time
	ScaleUpCooldown time.Duration
	ScaleDownDelay  time.Duration
}

// ScaleDecision is the autoscaler's answer: the new desired count (equal
// to Current when nothing changes), why, and the LowSince to keep.
type ScaleDecision struct {
	Replicas int
	Reason   string
	LowSince time.Time
}

// DecideScale is the autoscaler: a pure function of the observed load.
// The wanted count is ceil(load / target) within [Min, Max]. It scales up
// at once unless the last scale-up is younger than ScaleUpCooldown, and
// down only when the load has wanted fewer replicas for ScaleDownDelay
// (so a short lull does not drop replicas that a burst needs again).
func DecideScale(in ScaleInput) ScaleDecision {
	out := ScaleDecision{Replicas: in.Current}
	var want int
	var load string
	switch {
	case in.TargetRPS > 0:
		want = int(math.Ceil(in.RPS/in.TargetRPS - 1e-9))
		load = fmt.Sprintf("%.1f req/s against a target of %g per replica", in.RPS, in.TargetRPS)
	case in.TargetConcurrency > 0:
		want = int(math.Ceil(in.Concurrency/in.TargetConcurrency - 1e-9))
		load = fmt.Sprintf("%.1f requests in flight against a target of %g per replica", in.Concurrency, in.TargetConcurrency)
	default:
		return out
	}
	want = max(min(want, in.Max), in.Min)
	switch {
	case want > in.Current:
		if !in.LastScaleUp.IsZero() && in.Now.Sub(in.LastScaleUp) < in.ScaleUpCooldown {
			out.Reason = fmt.Sprintf("would scale up to %d (%s) but the last scale-up was %s ago", want, load, in.Now.Sub(in.LastScaleUp).Round(time.Second))
			return out
		}
		out.Replicas = want
		out.Reason = fmt.Sprintf("scale up %d → %d: %s", in.Current, want, load)
	case want < in.Current:
		out.LowSince = in.LowSince
		if out.LowSince.IsZero() {
			out.LowSince = in.Now
		}
		if in.Now.Sub(out.LowSince) < in.ScaleDownDelay {
			out.Reason = fmt.Sprintf("load wants %d (%s) for %s; scaling down after %s", want, load, in.Now.Sub(out.LowSince).Round(time.Second), in.ScaleDownDelay)
			return out
		}
		out.Replicas = want
		out.LowSince = time.Time{}
		out.Reason = fmt.Sprintf("scale down %d → %d: %s for %s", in.Current, want, load, in.Now.Sub(in.LowSince).Round(time.Second))
	}
	return out
}

// EndpointUpsertRequest creates or replaces an endpoint (the leader
// writes the whole record: API changes, scale decisions, drains).
type EndpointUpsertRequest struct {
	Endpoint *Endpoint `json:"endpoint"`
	Time     time.Time `json:"time"`
}

// EndpointDeleteRequest removes an endpoint and destroys its replicas.
type EndpointDeleteRequest struct {
	Name   string    `json:"name"`
	Reason string    `json:"reason,omitempty"`
	Time   time.Time `json:"time"`
}
