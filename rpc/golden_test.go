package rpc

import (
	"bytes"
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/corral-dev/corral/internal/golden"
	"github.com/corral-dev/corral/structs"
)

// messages are every type that crosses the agent↔server protocol; the
// structs types they carry (Agent, Kernel, KernelUpdate) are pinned by
// the fixtures of the messages that hold them.
var messages = []any{
	&RegisterRequest{}, &RegisterResponse{}, &WatchRequest{}, &WatchResponse{},
	&structs.KernelUpdateRequest{}, &UpdateKernelsResponse{},
	&ExecRequest{}, &ExecInput{}, &ExecFrame{}, &LogsRequest{}, &LogsResponse{},
	&ImageInfo{}, &ImageListRequest{}, &ImageListResponse{}, &ImagePullRequest{}, &ImagePullResponse{},
	&ImageRemoveRequest{}, &ImageRemoveResponse{},
	&StatsRequest{}, &KernelStats{}, &StatsResponse{},
	&ReadIndexRequest{}, &ReadIndexResponse{},
	&SignAgentRequest{}, &SignAgentResponse{}, &JoinServerRequest{}, &JoinServerResponse{},
	&EndpointStatsRequest{}, &EndpointStatsResponse{},
	&VolumeUsageRequest{}, &VolumeUsageResponse{},
}

func typeName(v any) string { return reflect.TypeOf(v).Elem().Name() }

// TestGoldenMessages pins the JSON encoding of every message: encoding a
// fully populated value must give the fixture byte for byte, and decoding
// the fixture must give the value back.
func TestGoldenMessages(t *testing.T) {
	for _, m := range messages {
		name := typeName(m)
		t.Run(name, func(t *testing.T) {
			golden.Fill(m)
			if z := golden.Zero(m); len(z) > 0 {
				t.Fatalf("fields left zero, the fixture would not pin them: %v", z)
			}
			wire, err := jsonCodec{}.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join("testdata", "golden", name+".json")
			golden.Check(t, path, nil, wire)
			fixture, err := golden.Read(path)
			if err != nil {
				t.Fatal(err)
			}
			back := reflect.New(reflect.TypeOf(m).Elem()).Interface()
			if err := (jsonCodec{}).Unmarshal(fixture, back); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(back, m) {
				t.Fatalf("decoding the fixture gave\n%+v\nwant\n%+v", back, m)
			}
		})
	}
}

// TestGoldenCoversEveryMessage fails when messages.go gains a type that
// has no fixture.
func TestGoldenCoversEveryMessage(t *testing.T) {
	have := map[string]bool{}
	for _, m := range messages {
		have[typeName(m)] = true
	}
	var missing []string
	for _, file := range []string{"messages.go", "readindex.go"} {
		f, err := parser.ParseFile(token.NewFileSet(), file, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			if ts, ok := n.(*ast.TypeSpec); ok && ts.Name.IsExported() && !have[ts.Name.Name] {
				missing = append(missing, ts.Name.Name)
			}
			return true
		})
	}
	if len(missing) > 0 {
		t.Fatalf("messages without a golden fixture (add them to messages): %v", missing)
	}
}

// TestPreviousVersionMessages decodes the messages of protocol 1, which
// carried no version: everything else they say must still be read, and
// the version reads as absent (protocol 1).
func TestPreviousVersionMessages(t *testing.T) {
	for _, m := range []any{&RegisterRequest{}, &RegisterResponse{}, &WatchRequest{}} {
		name := typeName(m)
		t.Run(name, func(t *testing.T) {
			old, err := golden.Read(filepath.Join("testdata", "golden", "v1", name+".json"))
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Contains(old, []byte("protocol_version")) {
				t.Fatal("a protocol 1 fixture must not carry a version")
			}
			got := reflect.New(reflect.TypeOf(m).Elem())
			if err := (jsonCodec{}).Unmarshal(old, got.Interface()); err != nil {
				t.Fatal(err)
			}
			golden.Fill(m)
			want := reflect.ValueOf(m).Elem()
			want.FieldByName("ProtocolVersion").SetInt(0)
			// Fields added to the carried types since protocol 1 read as
			// absent too.
			if r, ok := m.(*RegisterRequest); ok {
				r.Agent.DisconnectedAt = time.Time{}
				r.Agent.UnhealthyDrivers = nil
				r.Agent.GPUs, r.Agent.GPUHolders = nil, nil
				r.Agent.VolumeRoots = nil
			}
			if !reflect.DeepEqual(got.Elem().Interface(), want.Interface()) {
				t.Fatalf("protocol 1 %s decoded as\n%+v\nwant\n%+v", name, got.Elem().Interface(), want.Interface())
			}
			v := int(got.Elem().FieldByName("ProtocolVersion").Int())
			if EffectiveVersion(v) != 1 {
				t.Fatalf("absent version reads as %d", EffectiveVersion(v))
			}
		})
	}
}

// TestCodecIgnoresUnknownFields: a newer peer may add fields; this
// version reads what it knows and drops the rest.
func TestCodecIgnoresUnknownFields(t *testing.T) {
	in := []byte(`{"agent":{"id":"a1","name":"n","from_the_future":[1,2]},"protocol_version":3,"new_top_level":{"x":true}}`)
	var req RegisterRequest
	if err := (jsonCodec{}).Unmarshal(in, &req); err != nil {
		t.Fatalf("unknown fields refused: %v", err)
	}
	if req.Agent == nil || req.Agent.ID != "a1" || req.ProtocolVersion != 3 {
		t.Fatalf("decoded %+v", req)
	}
}

func TestVersionChecks(t *testing.T) {
	for _, tc := range []struct {
		v    int
		want string // "" when accepted
	}{
		{0, ""}, {1, ""}, {2, ""}, {3, ""},
		{-1, "agent speaks protocol -1; this server (protocol 2) accepts 1–3: upgrade the agent"},
		{99, "agent speaks protocol 99; this server (protocol 2) accepts 1–3: upgrade the servers first"},
	} {
		err := CheckAgentVersion(tc.v)
		if (tc.want == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), tc.want) {
			t.Errorf("CheckAgentVersion(%d) = %v, want %q", tc.v, err, tc.want)
		}
	}
	for v, ok := range map[int]bool{0: true, 1: true, 2: true, 3: true, 4: false} {
		if err := CheckServerVersion(v); (err == nil) != ok {
			t.Errorf("CheckServerVersion(%d) = %v", v, err)
		}
	}
	if err := CheckServerVersion(4); !strings.Contains(err.Error(), "upgrade the agent") {
		t.Errorf("server too new: %v", err)
	}
}
