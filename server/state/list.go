package state

import (
	"cmp"
	"strings"

	"github.com/hashicorp/go-memdb"

	"github.com/corral-dev/corral/structs"
)

// SessionCursor is a position in the list of sessions ordered by create
// index, then ID: a page starts at the first session not before it.
type SessionCursor struct {
	CreateIndex uint64
	ID          string
}

// before reports whether s sorts before the cursor.
func (c SessionCursor) before(s *structs.Session) bool {
	if x := cmp.Compare(s.CreateIndex, c.CreateIndex); x != 0 {
		return x < 0
	}
	return s.ID < c.ID
}

// SessionQuery selects a page of sessions.
type SessionQuery struct {
	// Statuses keeps only sessions in one of these statuses (all when empty).
	Statuses []structs.SessionStatus
	// From is where the page starts (the zero cursor: the beginning).
	From SessionCursor
	// Limit bounds the page (0: no bound).
	Limit int
	// Keep, when set, keeps only the sessions it accepts (visibility).
	Keep func(*structs.Session) bool
}

// SessionPage lists sessions in creation order from q.From; next is the
// cursor of the first session after the page, nil when the page reaches
// the end. A watch on the sessions table goes into ws.
func (sn *Snapshot) SessionPage(ws memdb.WatchSet, q SessionQuery) (page []*structs.Session, next *SessionCursor, err error) {
	status := ""
	if len(q.Statuses) == 1 {
		status = string(q.Statuses[0])
	}
	all, err := sn.Sessions(ws, status)
	if err != nil {
		return nil, nil, err
	}
	want := map[structs.SessionStatus]bool{}
	for _, st := range q.Statuses {
		want[st] = true
	}
	page = []*structs.Session{}
	for _, s := range all {
		if q.From.before(s) || (len(want) > 0 && !want[s.Status]) || (q.Keep != nil && !q.Keep(s)) {
			continue
		}
		if q.Limit > 0 && len(page) == q.Limit {
			return page, &SessionCursor{CreateIndex: s.CreateIndex, ID: s.ID}, nil
		}
		page = append(page, s)
	}
	return page, nil, nil
}

// cmpSessions orders sessions by create index, then ID.
func cmpSessions(a, b *structs.Session) int {
	if c := cmp.Compare(a.CreateIndex, b.CreateIndex); c != 0 {
		return c
	}
	return strings.Compare(a.ID, b.ID)
}
