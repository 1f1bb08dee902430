package server

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/hashicorp/go-memdb"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/server/state"
	"github.com/corral-dev/corral/structs"
)

// parseListQuery reads ?status=S1,S2&limit=N&next=TOKEN (and the blocking
// query's index and wait, read by blockingParams).
func parseListQuery(r *http.Request) (*state.SessionQuery, error) {
	q := r.URL.Query()
	sq := &state.SessionQuery{}
	seen := map[structs.SessionStatus]bool{}
	for _, v := range q["status"] {
		for _, part := range strings.Split(v, ",") {
			st := structs.SessionStatus(strings.ToUpper(strings.TrimSpace(part)))
			if st == "" {
				continue
			}
			if !st.Valid() {
				return nil, badRequest("unknown session status %q in status filter: use one or more of %s, comma-separated", part, sessionStatusNames())
			}
			if !seen[st] {
				seen[st] = true
				sq.Statuses = append(sq.Statuses, st)
			}
		}
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > api.MaxPageSize {
			return nil, badRequest("invalid limit %q: want a whole number from 1 to %d", v, api.MaxPageSize)
		}
		sq.Limit = n
	}
	if v := q.Get("next"); v != "" {
		c, err := decodeCursor(v)
		if err != nil {
			return nil, badRequest("invalid next token %q: pass back the %s header of the previous page unchanged", v, api.NextTokenHeader)
		}
		sq.From = c
	}
	return sq, nil
}

// sessionStatusNames lists the session statuses for error messages.
func sessionStatusNames() string {
	return strings.Join([]string{
		string(structs.SessionPending), string(structs.SessionScheduled), string(structs.SessionPreparing),
		string(structs.SessionPulling), string(structs.SessionRunning), string(structs.SessionRunningDegraded),
		string(structs.SessionRestarting), string(structs.SessionTerminating), string(structs.SessionTerminated),
		string(structs.SessionError), string(structs.SessionCancelled),
	}, ", ")
}

// cursorVersion prefixes the content of a next token, so that its form
// can change without misreading old tokens.
const cursorVersion = "c1"

// encodeCursor turns a list position into an opaque next token.
func encodeCursor(c *state.SessionCursor) string {
	return base64.RawURLEncoding.EncodeToString(fmt.Appendf(nil, "%s:%d:%s", cursorVersion, c.CreateIndex, c.ID))
}

// decodeCursor reads a token made by encodeCursor.
func decodeCursor(tok string) (state.SessionCursor, error) {
	raw, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		return state.SessionCursor{}, err
	}
	parts := strings.SplitN(string(raw), ":", 3)
	if len(parts) != 3 || parts[0] != cursorVersion || parts[2] == "" {
		return state.SessionCursor{}, fmt.Errorf("malformed token")
	}
	idx, err := strconv.ParseUint(parts[1], 10, 64)
	if err != nil {
		return state.SessionCursor{}, err
	}
	return state.SessionCursor{CreateIndex: idx, ID: parts[2]}, nil
}

// listSessions answers GET /v1/sessions: the sessions the caller may see,
// oldest (by create index) first, as a JSON array. With ?limit=N the page
// holds at most N and, when more follow, the X-Corral-Next-Token header
// carries the token for ?next=. Without a limit every session from ?next=
// on comes in one answer, as before pagination existed. With ?index=N it
// is a blocking query: it answers once the sessions table's index exceeds
// N, or when ?wait= has passed; X-Corral-Index is that index.
func (s *Server) listSessions(w http.ResponseWriter, r *http.Request) (any, error) {
	sq, err := parseListQuery(r)
	if err != nil {
		return nil, err
	}
	index, wait, err := blockingParams(r)
	if err != nil {
		return nil, err
	}
	caller := r.Context()
	sq.Keep = func(sess *structs.Session) bool { return visible(caller, sess) }
	ctx, cancel := context.WithTimeout(r.Context(), wait)
	defer cancel()
	for {
		abandon := s.state.AbandonCh()
		snap := s.state.Snapshot()
		idx := snap.Index("sessions")
		if index == 0 || idx > index || ctx.Err() != nil {
			return s.sessionPage(w, snap, sq)
		}
		ws := memdb.NewWatchSet()
		snap.WatchTables(ws, "sessions")
		ws.Add(abandon)
		if ws.WatchCtx(ctx) != nil && r.Context().Err() != nil {
			return nil, r.Context().Err()
		}
	}
}

// sessionPage answers one page of the list from snap.
func (s *Server) sessionPage(w http.ResponseWriter, snap *state.Snapshot, sq *state.SessionQuery) (any, error) {
	page, next, err := snap.SessionPage(nil, *sq)
	if err != nil {
		return nil, err
	}
	w.Header().Set(api.IndexHeader, strconv.FormatUint(snap.Index("sessions"), 10))
	if next != nil {
		w.Header().Set(api.NextTokenHeader, encodeCursor(next))
	}
	return page, nil
}
