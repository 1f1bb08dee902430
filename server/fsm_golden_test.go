package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/corral-dev/corral/internal/golden"
	"github.com/corral-dev/corral/server/state"
	"github.com/corral-dev/corral/structs"
)

// entries lists every raft entry type with the request it carries. The
// fixture's file name holds the type number, so renumbering fails too.
var entries = []struct {
	typ structs.MessageType
	req any
}{
	{structs.SessionEnqueueRequestType, &structs.SessionEnqueueRequest{}},
	{structs.PlanApplyRequestType, &structs.PlanApplyRequest{}},
	{structs.KernelUpdateRequestType, &structs.KernelUpdateRequest{}},
	{structs.AgentUpsertRequestType, &structs.AgentUpsertRequest{}},
	{structs.AgentStatusRequestType, &structs.AgentStatusRequest{}},
	{structs.SessionDestroyRequestType, &structs.SessionDestroyRequest{}},
	{structs.ConfigUpsertRequestType, &structs.ConfigUpsertRequest{}},
	{structs.AgentDrainRequestType, &structs.AgentDrainRequest{}},
	{structs.KernelsLostRequestType, &structs.KernelsLostRequest{}},
	{structs.SessionsGCRequestType, &structs.SessionsGCRequest{}},
	{structs.ClusterSecretsRequestType, &structs.ClusterSecretsRequest{}},
	{structs.CertIssueRequestType, &structs.CertIssueRequest{}},
	{structs.CertRevokeRequestType, &structs.CertRevokeRequest{}},
	{structs.EndpointUpsertRequestType, &structs.EndpointUpsertRequest{}},
	{structs.EndpointDeleteRequestType, &structs.EndpointDeleteRequest{}},
	{structs.ConfigDeleteRequestType, &structs.ConfigDeleteRequest{}},
	{structs.VolumeUpsertRequestType, &structs.VolumeUpsertRequest{}},
	{structs.VolumeDeleteRequestType, &structs.VolumeDeleteRequest{}},
	{structs.SSHKeysSetRequestType, &structs.SSHKeysSetRequest{}},
	{structs.TemplateUpsertRequestType, &structs.TemplateUpsertRequest{}},
	{structs.TemplateDeleteRequestType, &structs.TemplateDeleteRequest{}},
}

func entryFixture(typ structs.MessageType, req any) string {
	return filepath.Join("testdata", "golden", "raft", fmt.Sprintf("%03d-%s.json", typ, reflect.TypeOf(req).Elem().Name()))
}

// TestGoldenRaftEntries pins every raft entry as the log stores it: the
// type byte, then the request's JSON, byte for byte; the fixture decodes
// back to the value.
func TestGoldenRaftEntries(t *testing.T) {
	for _, e := range entries {
		path := entryFixture(e.typ, e.req)
		t.Run(filepath.Base(path), func(t *testing.T) {
			golden.Fill(e.req)
			if z := golden.Zero(e.req); len(z) > 0 {
				t.Fatalf("fields left zero, the fixture would not pin them: %v", z)
			}
			data, err := encodeCommand(e.typ, e.req)
			if err != nil {
				t.Fatal(err)
			}
			golden.Check(t, path, []byte{byte(e.typ)}, data)
			fixture, err := golden.Read(path)
			if err != nil {
				t.Fatal(err)
			}
			back := reflect.New(reflect.TypeOf(e.req).Elem()).Interface()
			if err := json.Unmarshal(fixture, back); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(back, e.req) {
				t.Fatalf("decoding the fixture gave\n%+v\nwant\n%+v", back, e.req)
			}
		})
	}
}

// TestGoldenSnapshot pins the snapshot format (every table, every field).
func TestGoldenSnapshot(t *testing.T) {
	d := &state.Dump{}
	golden.Fill(d)
	if z := golden.Zero(d); len(z) > 0 {
		t.Fatalf("fields left zero: %v", z)
	}
	wire, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join("testdata", "golden", "snapshot.json")
	golden.Check(t, path, nil, wire)
	fixture, err := golden.Read(path)
	if err != nil {
		t.Fatal(err)
	}
	f, _ := testFSM(t)
	back, err := f.decodeDump(strings.NewReader(string(fixture)))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, d) {
		t.Fatalf("decoding the fixture gave\n%+v\nwant\n%+v", back, d)
	}
}

// TestGoldenCoversEveryEntryType fails when the FSM learns a type, or
// requests.go gains a request, that has no fixture.
func TestGoldenCoversEveryEntryType(t *testing.T) {
	f, _ := testFSM(t)
	next := structs.MessageType(len(entries) + 1)
	res := f.Apply(&raft.Log{Index: 1, Type: raft.LogCommand, Data: []byte{byte(next), '{', '}'}})
	if err, _ := res.(error); !errors.Is(err, ErrUnknownEntry) {
		t.Fatalf("the FSM applies type %d, which has no golden fixture (add it to entries): %v", next, res)
	}
	for i, e := range entries {
		if int(e.typ) != i+1 {
			t.Fatalf("entries must list types 1..N in order; %d is at %d", e.typ, i)
		}
	}
	file, err := parser.ParseFile(token.NewFileSet(), filepath.Join("..", "structs", "requests.go"), nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, e := range entries {
		have[reflect.TypeOf(e.req).Elem().Name()] = true
	}
	ast.Inspect(file, func(n ast.Node) bool {
		if ts, ok := n.(*ast.TypeSpec); ok && strings.HasSuffix(ts.Name.Name, "Request") && !have[ts.Name.Name] {
			t.Errorf("raft request %s has no golden fixture (add it to entries)", ts.Name.Name)
		}
		return true
	})
}
