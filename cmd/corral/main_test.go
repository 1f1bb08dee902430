package main

import (
	"net"
	"reflect"
	"strings"
	"testing"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/structs"
)

func TestUsageErrorsExit2WithOneLine(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"frobnicate"}, `unknown command "frobnicate" (see 'corral -h')`},
		{[]string{"session"}, "missing subcommand (see 'corral session -h')"},
		{[]string{"session", "frob"}, `unknown subcommand "frob": want one of create, list, status, logs, exec, app, run, wait, destroy`},
		{[]string{"node", "frob"}, `unknown subcommand "frob": want one of list, status`},
		{[]string{"session", "create"}, "missing the command to run"},
		{[]string{"session", "create", "-wait"}, "missing the command to run"},
		{[]string{"session", "create", "-type", "batch", "--"}, "missing the command to run"},
		{[]string{"session", "create", "-bogus", "--", "true"}, "flag provided but not defined: -bogus (see 'corral session create -h')"},
		{[]string{"session", "create", "-name"}, "flag needs an argument: -name"},
		{[]string{"session", "create", "-type", "party", "--", "true"}, `invalid -type "party": want batch, interactive or system`},
		{[]string{"session", "create", "-cpu", "lots", "--", "true"}, `invalid -cpu "lots"`},
		{[]string{"session", "create", "-cpu", "0", "--", "true"}, `invalid -cpu "0"`},
		{[]string{"session", "create", "-mem", "-5M", "--", "true"}, `invalid -mem "-5M"`},
		{[]string{"session", "create", "-pids", "-3", "--", "true"}, `invalid -pids -3`},
		{[]string{"session", "create", "-disk", "lots", "--", "true"}, `invalid -disk "lots"`},
		{[]string{"bench", "-waves", "0"}, "-waves must be >= 1"},
		{[]string{"session", "exec", "nb", "-wait-start", "soon", "--", "true"}, `invalid value "soon" for flag -wait-start`},
		{[]string{"session", "create", "-env", "NOEQUALS", "--", "true"}, `invalid value "NOEQUALS" for flag -env: want KEY=VALUE`},
		{[]string{"session", "create", "-address", "ftp://x", "--", "true"}, "the scheme must be http or https"},
		{[]string{"session", "list", "extra"}, `unexpected argument "extra"`},
		{[]string{"session", "status"}, "missing session ID, ID prefix or name (see 'corral session status -h')"},
		{[]string{"session", "status", "a", "b"}, `unexpected argument "b"`},
		{[]string{"session", "logs", "-kernel"}, "flag needs an argument: -kernel"},
		{[]string{"session", "exec", "nb"}, "missing the command to run"},
		{[]string{"session", "exec"}, "missing session ID"},
		{[]string{"session", "destroy"}, "missing session ID"},
		{[]string{"node", "status"}, "missing agent ID"},
		{[]string{"node", "list", "-json=maybe"}, "invalid boolean value"},
		{[]string{"bench", "-concurrency", "0"}, "-concurrency >= 1"},
		{[]string{"bench", "-cpu", "x"}, `invalid -cpu "x"`},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			// No server: a usage error must be found before any request.
			r := runCLI(t, "http://127.0.0.1:1", tc.args...)
			if r.code != 2 {
				t.Fatalf("exit %d, want 2; stderr %q", r.code, r.stderr)
			}
			if strings.Count(r.stderr, "\n") != 1 || !strings.HasPrefix(r.stderr, "Error: ") || !strings.Contains(r.stderr, tc.want) || !strings.Contains(r.stderr, "-h')") {
				t.Fatalf("stderr %q, want one line with %q and a hint to -h", r.stderr, tc.want)
			}
			if r.stdout != "" {
				t.Fatalf("stdout %q", r.stdout)
			}
		})
	}
}

func TestNoArgumentsPrintsUsageAndExits2(t *testing.T) {
	r := runCLI(t, "")
	if r.code != 2 || !strings.Contains(r.stderr, "Usage: corral") || r.stdout != "" {
		t.Fatalf("%+v", r)
	}
}

func TestHelpExits0(t *testing.T) {
	for _, args := range [][]string{{"help"}, {"-h"}, {"--help"}, {"session", "-h"}, {"node", "help"},
		{"session", "create", "-h"}, {"session", "status", "-h"}, {"session", "exec", "nb", "-h"}, {"node", "list", "-help"}, {"bench", "-h"}} {
		r := runCLI(t, "", args...)
		if r.code != 0 || !strings.Contains(r.stdout, "Usage: corral") || r.stderr != "" {
			t.Errorf("corral %v: %+v", args, r)
		}
	}
	r := runCLI(t, "", "session", "create", "-h")
	for _, flag := range []string{"-address", "-cpu", "-driver", "-env", "-group", "-image", "-mem", "-name", "-type", "-wait"} {
		if !strings.Contains(r.stdout, flag) {
			t.Errorf("create usage lacks %s", flag)
		}
	}
}

func TestVersion(t *testing.T) {
	old := version
	version = "v1.2.3"
	defer func() { version = old }()
	r := runCLI(t, "", "version")
	if r.code != 0 || r.stdout != "corral v1.2.3\n" {
		t.Fatalf("%+v", r)
	}
}

func TestParseCreate(t *testing.T) {
	env := func(addr string) *cli {
		return &cli{getenv: func(string) string { return addr }}
	}
	for _, tc := range []struct {
		name    string
		args    []string
		envAddr string
		want    api.CreateSessionRequest
		wait    bool
		address string
	}{
		{
			name: "defaults", args: []string{"--", "sh", "-c", "echo hi"},
			want:    api.CreateSessionRequest{Type: "batch", Command: []string{"sh", "-c", "echo hi"}},
			address: api.DefaultAddress,
		},
		{
			name: "command without --", args: []string{"-wait", "sleep", "10"},
			want: api.CreateSessionRequest{Type: "batch", Command: []string{"sleep", "10"}}, wait: true, address: api.DefaultAddress,
		},
		{
			name: "flags after -- belong to the command", args: []string{"-name", "x", "--", "ls", "-name", "-wait"},
			want: api.CreateSessionRequest{Name: "x", Type: "batch", Command: []string{"ls", "-name", "-wait"}}, address: api.DefaultAddress,
		},
		{
			name: "everything", envAddr: "10.0.0.1:8640",
			args: []string{"-name", "nb", "-type", "interactive", "-driver", "runc", "-image", "alpine:3", "-cpu", "0.5", "-mem", "1G",
				"-group", "gpu", "-env", "A=1", "-env", "B=x=y", "-env", "A=2", "-env", "EMPTY=", "-wait", "--", "sleep", "infinity"},
			want: api.CreateSessionRequest{
				Name: "nb", Type: "interactive", Driver: "runc", Image: "alpine:3", ResourceGroup: "gpu",
				Command:   []string{"sleep", "infinity"},
				Env:       map[string]string{"A": "2", "B": "x=y", "EMPTY": ""},
				Resources: structs.Slots{structs.SlotCPU: 500, structs.SlotMem: structs.Whole(1 << 30)},
			},
			wait: true, address: "10.0.0.1:8640",
		},
		{
			name: "only mem", args: []string{"-mem", "256M", "-address", "http://h:1", "true"},
			want:    api.CreateSessionRequest{Type: "batch", Command: []string{"true"}, Resources: structs.Slots{structs.SlotMem: structs.Whole(256 << 20)}},
			address: "http://h:1",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd, err := env(tc.envAddr).parseCreate(tc.args)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(cmd.req, tc.want) {
				t.Errorf("request\n got %+v\nwant %+v", cmd.req, tc.want)
			}
			if cmd.wait != tc.wait || cmd.flags.address != tc.address {
				t.Errorf("wait %v address %q", cmd.wait, cmd.flags.address)
			}
		})
	}
}

func TestParseInterspersedFlags(t *testing.T) {
	c := &cli{getenv: func(string) string { return "" }}
	for _, tc := range []struct {
		args       []string
		n          int
		pos, rest  []string
		json       bool
		kernelFlag string
	}{
		{[]string{"nb", "-json"}, 1, []string{"nb"}, []string{}, true, "main1"},
		{[]string{"-json", "nb"}, 1, []string{"nb"}, []string{}, true, "main1"},
		{[]string{"nb", "-kernel", "sub1", "--", "sh", "-c", "x"}, 1, []string{"nb"}, []string{"sh", "-c", "x"}, false, "sub1"},
		{[]string{"nb", "sh", "-json"}, 1, []string{"nb"}, []string{"sh", "-json"}, false, "main1"},
		{[]string{"--", "-weird-name", "cmd"}, 1, []string{"-weird-name"}, []string{"cmd"}, false, "main1"},
		{[]string{"-json"}, 1, nil, []string{}, true, "main1"},
	} {
		f := c.newFlags("session x", "", "", true)
		kernel := f.String("kernel", "main1", "")
		pos, rest, err := f.parse(tc.args, tc.n)
		if err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		if len(pos) == 0 {
			pos = nil
		}
		if !reflect.DeepEqual(pos, tc.pos) || !reflect.DeepEqual(append([]string{}, rest...), tc.rest) || f.json != tc.json || *kernel != tc.kernelFlag {
			t.Errorf("%v: pos %q rest %q json %v kernel %q", tc.args, pos, rest, f.json, *kernel)
		}
	}
}

func TestUnreachableServer(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	r := runCLI(t, addr, "session", "list")
	if r.code != 1 || strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, "Error: cannot reach corral at http://"+addr) || !strings.Contains(r.stderr, "CORRAL_ADDR") {
		t.Fatalf("%+v", r)
	}
}
