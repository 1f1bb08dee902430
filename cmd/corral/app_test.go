package main

import (
	"slices"
	"strings"
	"testing"

	"github.com/corral-dev/corral/structs"
)

func TestCreatePortFlags(t *testing.T) {
	c := &cli{getenv: func(string) string { return "" }}
	cmd, err := c.parseCreate([]string{"-type", "interactive", "-port", "jupyter", "-port", "web:8000", "-port", "db:5432/tcp", "-port", "ssh", "--", "sleep", "1"})
	if err != nil {
		t.Fatal(err)
	}
	want := []structs.ServicePort{
		{Name: "jupyter", Port: 8888, Protocol: "http"},
		{Name: "web", Port: 8000, Protocol: "http"},
		{Name: "db", Port: 5432, Protocol: "tcp"},
		{Name: "ssh", Port: 22, Protocol: "tcp"},
	}
	if !slices.Equal(cmd.req.ServicePorts, want) {
		t.Errorf("service ports %+v, want %+v", cmd.req.ServicePorts, want)
	}
	for _, bad := range []struct{ arg, want string }{
		{"notknown", "names known without a port are"},
		{"web:99999", "out of range"},
		{"web:80/udp", "unknown protocol"},
	} {
		_, err := c.parseCreate([]string{"-port", bad.arg, "--", "true"})
		if err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("-port %s: %v, want %q", bad.arg, err, bad.want)
		}
	}
}
