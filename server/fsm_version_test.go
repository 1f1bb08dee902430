package server

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/corral-dev/corral/server/state"
	"github.com/corral-dev/corral/structs"
)

func testFSM(t *testing.T) (*fsm, *bytes.Buffer) {
	t.Helper()
	st, err := state.New()
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	return &fsm{state: st, logger: slog.New(slog.NewTextHandler(&logs, nil))}, &logs
}

func TestFSMUnknownEntryTypes(t *testing.T) {
	const future structs.MessageType = 100 // a type some later server adds
	for _, tc := range []struct {
		name    string
		typ     structs.MessageType
		wantErr bool
		log     string
	}{
		{"ignorable", future.Ignorable(), false, "level=WARN msg=\"skipping raft entry of unknown type"},
		{"not ignorable", future, true, "level=ERROR msg=\"cannot apply raft entry"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, logs := testFSM(t)
			data := append([]byte{byte(tc.typ)}, `{"whatever":1}`...)
			var res any
			func() {
				defer func() {
					if r := recover(); r != nil {
						t.Fatalf("Apply panicked: %v", r)
					}
				}()
				res = f.Apply(&raft.Log{Index: 7, Type: raft.LogCommand, Data: data})
			}()
			err, _ := res.(error)
			if tc.wantErr != (err != nil) || (err != nil && !errors.Is(err, ErrUnknownEntry)) {
				t.Fatalf("Apply = %v, want error %v", res, tc.wantErr)
			}
			if err != nil && !strings.Contains(err.Error(), "type 100 at index 7") {
				t.Fatalf("error does not say which entry: %v", err)
			}
			if !strings.Contains(logs.String(), tc.log) || !strings.Contains(logs.String(), "type=100") {
				t.Fatalf("log %q lacks %q", logs.String(), tc.log)
			}
			if f.applied.Load() != 7 {
				t.Fatalf("applied index %d, want 7", f.applied.Load())
			}
		})
	}
	// A known type with the flag is still applied: the flag only matters
	// to servers that do not know the type.
	f, _ := testFSM(t)
	now := time.Now().UTC()
	data, err := encodeCommand(structs.AgentUpsertRequestType.Ignorable(), &structs.AgentUpsertRequest{Agent: &structs.Agent{ID: "a1", Name: "n1", Status: structs.AgentAlive}, Time: now})
	if err != nil {
		t.Fatal(err)
	}
	if res := f.Apply(&raft.Log{Index: 3, Type: raft.LogCommand, Data: data}); res != nil {
		t.Fatalf("known flagged entry: %v", res)
	}
	if _, err := f.state.Snapshot().Agent(nil, "a1"); err != nil {
		t.Fatalf("flagged known entry not applied: %v", err)
	}
}

func TestFSMRestoreSnapshotFromNewerServer(t *testing.T) {
	f, logs := testFSM(t)
	snap := `{"index":{"agents":5},
	  "agents":[{"id":"a1","name":"n1","status":"ALIVE","capacity":{"cpu":4},"occupied":{},"a_future_field":{"x":1}}],
	  "sessions":[],"kernels":[],
	  "widgets":[{"id":"w1"}],"gadgets":{}}`
	if err := f.Restore(io.NopCloser(strings.NewReader(snap))); err != nil {
		t.Fatalf("restore: %v", err)
	}
	a, err := f.state.Snapshot().Agent(nil, "a1")
	if err != nil || a.Name != "n1" {
		t.Fatalf("agent after restore: %+v, %v", a, err)
	}
	if !strings.Contains(logs.String(), "tables=\"[gadgets widgets]\"") {
		t.Fatalf("unknown tables not reported: %s", logs.String())
	}
	// A snapshot whose known table is malformed is refused, not half read.
	if err := f.Restore(io.NopCloser(strings.NewReader(`{"agents":{"not":"a list"}}`))); err == nil || !strings.Contains(err.Error(), "table agents") {
		t.Fatalf("malformed table: %v", err)
	}
	// A snapshot round-trips through Persist and Restore.
	s, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	sink := &memSink{}
	if err := s.Persist(sink); err != nil {
		t.Fatal(err)
	}
	g, _ := testFSM(t)
	if err := g.Restore(io.NopCloser(&sink.Buffer)); err != nil {
		t.Fatal(err)
	}
	if _, err := g.state.Snapshot().Agent(nil, "a1"); err != nil {
		t.Fatal(err)
	}
}

type memSink struct{ bytes.Buffer }

func (*memSink) ID() string    { return "mem" }
func (*memSink) Cancel() error { return nil }
func (*memSink) Close() error  { return nil }
