package main

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/corral-dev/corral/drivers/runc"
)

// writeConfig writes a config file named name into a temporary dir.
func writeConfig(t *testing.T, name, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

const gossipKeyA = "6ifB6HhHDxDGDfp5WE1Ol+lZvBJ8cBe+tPgYbIOOx1A="

func TestConfigFile(t *testing.T) {
	t.Setenv("CORRAL_GOSSIP_KEY", "")
	t.Setenv("CORRAL_JOIN_TOKEN", "")
	server := writeConfig(t, "server.hcl", `# a server of three
data_dir         = "/srv/corral"
name             = "srv-1"
log_level        = "debug"
log_format       = "json"
http             = "0.0.0.0:8640"
bootstrap_expect = 3
join             = ["10.0.0.11:8642", "10.0.0.12:8642"]
fast_gossip      = true
gc_retention     = "48h"
heartbeat_ttl    = "15s"
encrypt          = "`+gossipKeyA+`"
insecure         = true
allow_registry   = "registry.internal:5000"
`)
	agent := writeConfig(t, "agent.hcl", `
join              = "10.0.0.11:8642"
cpu               = 8
mem               = "64G"
userns            = false
insecure_registry = ["10.0.0.5:5000"]
max_image_size    = "20G"
no_gpus           = true
`)
	jsonAgent := writeConfig(t, "agent.json", `{"join": ["10.0.0.11:8642"], "userns": "auto", "resource_group": "gpu"}`)

	for _, tc := range []struct {
		name  string
		role  string
		args  []string
		env   map[string]string
		check func(t *testing.T, f *daemonFlags)
	}{
		{"every kind of value", "server", []string{"-config", server}, nil, func(t *testing.T, f *daemonFlags) {
			if f.dataDir != "/srv/corral" || f.name != "srv-1" || f.logLevel != "debug" || f.logFormat != "json" || f.httpAddr != "0.0.0.0:8640" ||
				f.bootstrapExpect != 3 || !f.fastGossip || f.gcRetention != 48*time.Hour || f.heartbeatTTL != 15*time.Second ||
				f.sec.encrypt != gossipKeyA || !f.insecure || !reflect.DeepEqual([]string(f.allowedRegistries), []string{"registry.internal:5000"}) {
				t.Errorf("parsed %+v", f)
			}
			if !reflect.DeepEqual([]string(f.join), []string{"10.0.0.11:8642", "10.0.0.12:8642"}) {
				t.Errorf("join %v", f.join)
			}
			if f.rpcAddr != "127.0.0.1:8641" {
				t.Errorf("an option the file does not set keeps its default: rpc %q", f.rpcAddr)
			}
		}},
		{"flags override the file, a list flag the file's whole list", "server",
			[]string{"-data-dir", "/other", "-config", server, "-join", "10.9.9.9:8642", "-fast-gossip=false", "-log-format", "text"}, nil,
			func(t *testing.T, f *daemonFlags) {
				if f.dataDir != "/other" || f.fastGossip || f.logFormat != "text" || !reflect.DeepEqual([]string(f.join), []string{"10.9.9.9:8642"}) {
					t.Errorf("parsed data dir %q, fast gossip %v, log format %q, join %v", f.dataDir, f.fastGossip, f.logFormat, f.join)
				}
				if f.bootstrapExpect != 3 || f.name != "srv-1" {
					t.Errorf("options only in the file: bootstrap_expect %d, name %q", f.bootstrapExpect, f.name)
				}
			}},
		{"the environment overrides the file", "server", []string{"-config", server}, map[string]string{"CORRAL_GOSSIP_KEY": "c2hvcnQ="},
			func(t *testing.T, f *daemonFlags) {
				if f.sec.encrypt != "c2hvcnQ=" {
					t.Errorf("encrypt %q, want the environment's", f.sec.encrypt)
				}
			}},
		{"agent: numbers, bools and single strings", "agent", []string{"-config", agent}, nil, func(t *testing.T, f *daemonFlags) {
			if f.cpu != "8" || f.mem != "64G" || f.runc.userns.mode != runc.UserNSOff || !f.noGPUs || f.maxImageBytes != 20<<30 ||
				!reflect.DeepEqual([]string(f.join), []string{"10.0.0.11:8642"}) || !reflect.DeepEqual([]string(f.insecureRegistries), []string{"10.0.0.5:5000"}) {
				t.Errorf("parsed %+v", f)
			}
			if c, err := f.capacity(); err != nil || len(c) != 2 {
				t.Errorf("capacity %v %v", c, err)
			}
		}},
		{"JSON syntax", "agent", []string{"-config", jsonAgent}, nil, func(t *testing.T, f *daemonFlags) {
			if f.group != "gpu" || f.runc.userns.mode != runc.UserNSAuto || len(f.join) != 1 {
				t.Errorf("parsed %+v", f)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			f, err := parseDaemonFlags(tc.role, tc.args)
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, f)
		})
	}
}

func TestConfigFileErrors(t *testing.T) {
	t.Setenv("CORRAL_GOSSIP_KEY", "")
	t.Setenv("CORRAL_JOIN_TOKEN", "")
	for _, tc := range []struct {
		name, role, text string
		want             string // after "FILE:"
	}{
		{"unknown option", "server", "data_dir = \"/x\"\ncolour = \"blue\"\n",
			`2,1-7: Unknown option colour; corral server has no option "colour"`},
		{"an option of another role", "agent", "join = \"a:1\"\n\nbootstrap_expect = 3\n",
			"3,1-17: Unknown option bootstrap_expect; bootstrap_expect is an option of corral server and corral dev, not of corral agent"},
		{"a flag's spelling", "server", "data-dir = \"/x\"\n",
			"1,1-9: Unknown option data-dir; write it data_dir"},
		{"config in config", "server", "config = \"/etc/other.hcl\"\n",
			"1,1-7: Unknown option config; a config file cannot name another"},
		{"string for a number", "server", "bootstrap_expect = \"three\"\n",
			"1,20-27: Invalid value for bootstrap_expect; want a number, got a string"},
		{"fraction for a number", "server", "bootstrap_expect = 2.5\n",
			"1,20-23: Invalid value for bootstrap_expect; want a whole number, got 2.5"},
		{"string for a bool", "server", "\n\nfast_gossip = \"yes\"\n",
			"3,15-20: Invalid value for fast_gossip; want a bool, got a string"},
		{"number for a list", "server", "join = 5\n",
			"1,8-9: Invalid value for join; want a list of strings, got a number"},
		{"list of numbers", "server", "join = [\"a:1\", 2]\n",
			"1,8-18: Invalid value for join; want a list of strings, got a list"},
		{"number for a duration", "server", "gc_retention = 3600\n",
			`1,16-20: Invalid value for gc_retention; want a duration string ("90s", "24h"), got a number`},
		{"bad duration", "server", "gc_retention = \"a day\"\n",
			`1,16-23: Invalid value for gc_retention; parse error`},
		{"bool for a string", "server", "data_dir = true\n",
			"1,12-16: Invalid value for data_dir; want a string, got a bool"},
		{"bad userns", "agent", "join = \"a:1\"\nuserns = \"sometimes\"\n",
			`2,10-21: Invalid value for userns`},
		{"a block", "server", "tls {\n  ca = \"x\"\n}\n",
			"1,1-4: Unexpected \"tls\" block; Blocks are not allowed here."},
		{"syntax", "server", "data_dir = \n",
			"1,12-2,1: Invalid expression"},
		{"a variable", "server", "data_dir = home\n",
			"1,12-16: Variables not allowed"},
		{"checked with the others: blamed on its line", "agent", "join = \"a:1\"\nmax_image_size = \"huge\"\n",
			`-max-image-size "huge": want a positive size such as 50G or 500M (set as max_image_size at FILE:2)`},
		{"log format", "server", "log_format = \"xml\"\n",
			`invalid log format "xml": want text or json (set as log_format at FILE:1)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := writeConfig(t, "corral.hcl", tc.text)
			_, err := parseDaemonFlags(tc.role, []string{"-config", p})
			want := strings.ReplaceAll(tc.want, "FILE", p)
			if !strings.Contains(tc.want, "FILE") {
				want = p + ":" + tc.want
			}
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("error %v\nwant it to contain %q", err, want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error on several lines: %q", err)
			}
		})
	}
	if _, err := parseDaemonFlags("server", []string{"-config", "/nonexistent/corral.hcl"}); err == nil || !strings.Contains(err.Error(), "/nonexistent/corral.hcl") {
		t.Errorf("missing file: %v", err)
	}
}
