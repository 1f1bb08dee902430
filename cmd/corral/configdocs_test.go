package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/corral-dev/corral/internal/golden"
)

const (
	configDocs     = "../../docs/configuration.md"
	optionsBegin   = "<!-- options:begin (generated: go test ./cmd/corral -run TestConfigDocs -update) -->"
	optionsEnd     = "<!-- options:end -->"
	exampleConfigs = "../../packaging/"
)

// optionsReference is the reference of every option of every role, as
// docs/configuration.md shows it.
func optionsReference() string {
	var b strings.Builder
	for _, role := range []string{"server", "agent", "dev"} {
		fmt.Fprintf(&b, "\n### corral %s\n\n| option | type | default | what it sets |\n|---|---|---|---|\n", role)
		newDaemonFlagSet(role, &daemonFlags{}).VisitAll(func(fl *flag.Flag) {
			if fl.Name == "config" {
				return
			}
			def := "`" + fl.DefValue + "`"
			if fl.DefValue == "" {
				def = ""
			}
			usage := strings.ReplaceAll(fl.Usage, "|", "\\|")
			fmt.Fprintf(&b, "| `%s` (`-%s`) | %s | %s | %s |\n", optionName(fl.Name), fl.Name, kindOf(fl).describe(), def, usage)
		})
	}
	return b.String()
}

// TestConfigDocs: docs/configuration.md documents every option of every
// role, with the type and default the code has.
func TestConfigDocs(t *testing.T) {
	b, err := os.ReadFile(configDocs)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	i, j := strings.Index(doc, optionsBegin), strings.Index(doc, optionsEnd)
	if i < 0 || j < i {
		t.Fatalf("%s has no %q ... %q section", configDocs, optionsBegin, optionsEnd)
	}
	want := optionsReference()
	if got := doc[i+len(optionsBegin) : j]; got != want+"\n" {
		if *golden.Update {
			doc = doc[:i+len(optionsBegin)] + want + "\n" + doc[j:]
			if err := os.WriteFile(configDocs, []byte(doc), 0o644); err != nil {
				t.Fatal(err)
			}
			return
		}
		t.Errorf("%s is out of date with the flags: go test ./cmd/corral -run TestConfigDocs -update", configDocs)
	}
}

// TestExampleConfigs: the example configs that packages install parse,
// with the options they name, for their role.
func TestExampleConfigs(t *testing.T) {
	t.Setenv("CORRAL_GOSSIP_KEY", "")
	t.Setenv("CORRAL_JOIN_TOKEN", "")
	for _, role := range []string{"server", "agent"} {
		p := exampleConfigs + role + ".hcl"
		f, err := parseDaemonFlags(role, []string{"-config", p})
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if f.dataDir != "/var/lib/corral/"+role {
			t.Errorf("%s: data_dir %q", p, f.dataDir)
		}
	}
}
