package state

import (
	"time"

	"github.com/hashicorp/go-memdb"

	"github.com/corral-dev/corral/server/scheduler"
	"github.com/corral-dev/corral/structs"
)

// SchedulerInput builds a scheduling pass's input from the snapshot, registering in ws
// what should wake the next pass. It also returns the pending sessions by
// ID and the earliest future start time among them (zero: none).
func (snap *Snapshot) SchedulerInput(ws memdb.WatchSet, now time.Time) (*scheduler.Input, map[string]*structs.Session, time.Time, error) {
	var wake time.Time
	pending, err := snap.Sessions(ws, string(structs.SessionPending))
	if err != nil {
		return nil, nil, wake, err
	}
	agents, err := snap.Agents(ws)
	if err != nil {
		return nil, nil, wake, err
	}
	snap.WatchTables(ws, tableGroups, tablePolicies, tableKeys)
	in := &scheduler.Input{
		Agents:     agents,
		Index:      snap.Index(""),
		Groups:     map[string]*structs.ResourceGroup{},
		Policies:   map[string]*structs.ResourcePolicy{},
		Usage:      map[string]*structs.KeyUsage{},
		GroupUsage: map[string]structs.Slots{},
		Now:        now,
		LookupSession: func(id string) *structs.Session {
			sess, err := snap.Session(nil, id)
			if err != nil {
				return nil
			}
			return sess
		},
	}
	groups, err := snap.Groups()
	if err != nil {
		return nil, nil, wake, err
	}
	for _, g := range groups {
		in.Groups[g.Name] = g
		if len(g.TotalResourceSlots) > 0 {
			in.GroupUsage[g.Name] = snap.GroupUsage(g.Name)
		}
	}
	byID := make(map[string]*structs.Session, len(pending))
	for _, sess := range pending {
		ks, err := snap.kernelsOf(nil, sess)
		if err != nil {
			return nil, nil, wake, err
		}
		in.Pending = append(in.Pending, &scheduler.PendingSession{Session: sess, Kernels: ks})
		byID[sess.ID] = sess
		if ak := sess.AccessKey; ak != "" {
			if _, ok := in.Usage[ak]; !ok {
				in.Usage[ak] = snap.Usage(ak)
				if p := snap.KeyPolicy(ak); p != nil {
					in.Policies[ak] = p
				}
			}
		}
		if at := sess.StartsAt; at.After(now) && (wake.IsZero() || at.Before(wake)) {
			wake = at
		}
	}
	return in, byID, wake, nil
}
