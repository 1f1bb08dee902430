package server

import (
	"maps"
	"net/http"
	"slices"
	"time"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/server/scheduler"
)

// queue lists pending sessions in the order the scheduler takes them: it
// runs a pass on the current state without applying it, so the order is
// the one of the group's session selector (and, for drf, of what the pass
// could place). ?group=G limits it to one resource group; without it every
// group's queue is listed, groups in name order. Users see their own
// sessions, at their position in the whole queue.
func (s *Server) queue(w http.ResponseWriter, r *http.Request) (any, error) {
	group := r.URL.Query().Get("group")
	if group != "" && !nameRe.MatchString(group) {
		return nil, badRequest("invalid resource group name %q", group)
	}
	snap := s.state.Snapshot()
	in, byID, _, err := snap.SchedulerInput(nil, time.Now().UTC())
	if err != nil {
		return nil, err
	}
	res := scheduler.Plan(in)
	groups := []string{group}
	if group == "" {
		groups = slices.Sorted(maps.Keys(res.Order))
	}
	out := []*api.QueueEntry{}
	for _, g := range groups {
		for i, id := range res.Order[g] {
			sess := byID[id]
			if sess == nil || !visible(r.Context(), sess) {
				continue
			}
			out = append(out, &api.QueueEntry{Position: i + 1, Session: sess})
		}
	}
	return out, nil
}
