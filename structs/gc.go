package structs

import "time"

// SessionsGCRequest deletes ended sessions and their kernels (those of
// earlier attempts of a re-queued session too) from the state in one raft
// entry. The FSM never reads the clock: every server deletes the same set,
// chosen from the state and this request alone.
type SessionsGCRequest struct {
	// Cutoff: only sessions that ended (TERMINATED, ERROR or CANCELLED)
	// strictly before it are collected.
	Cutoff time.Time `json:"cutoff"`
	// IDs, when not empty, restricts the collection to these sessions
	// (each still has to qualify).
	IDs []string `json:"ids,omitempty"`
	// Limit bounds how many sessions one entry deletes, oldest (by create
	// index) first; 0 means DefaultGCBatch.
	Limit int `json:"limit,omitempty"`
	// Time is when the request was made (for the log only).
	Time time.Time `json:"time"`
}

// DefaultGCBatch is how many sessions one GC entry deletes at most when
// its request names no limit.
const DefaultGCBatch = 1000

// SessionsGCResult says what one GC entry deleted.
type SessionsGCResult struct {
	Sessions int `json:"sessions"`
	Kernels  int `json:"kernels"`
	// More is true when the batch was full: more sessions may qualify.
	More bool `json:"more,omitempty"`
}
