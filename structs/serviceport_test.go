package structs

import (
	"strings"
	"testing"
)

func TestParseServicePort(t *testing.T) {
	cases := []struct {
		in   string
		want ServicePort
		err  string
	}{
		{in: "jupyter", want: ServicePort{Name: "jupyter", Port: 8888, Protocol: "http"}},
		{in: "tensorboard", want: ServicePort{Name: "tensorboard", Port: 6006, Protocol: "http"}},
		{in: "ssh", want: ServicePort{Name: "ssh", Port: 22, Protocol: "tcp"}},
		{in: "code-server", want: ServicePort{Name: "code-server", Port: 8080, Protocol: "http"}},
		{in: "web:8000", want: ServicePort{Name: "web", Port: 8000, Protocol: "http"}},
		{in: "db:5432/tcp", want: ServicePort{Name: "db", Port: 5432, Protocol: "tcp"}},
		{in: "jupyter:9999", want: ServicePort{Name: "jupyter", Port: 9999, Protocol: "http"}},
		{in: "ssh:2222/http", want: ServicePort{Name: "ssh", Port: 2222, Protocol: "http"}},
		{in: "myapp", err: "names known without a port are"},
		{in: "web:0", err: "out of range [1, 65535]"},
		{in: "web:70000", err: "out of range"},
		{in: "web:http", err: "is not a number"},
		{in: "web:80/udp", err: `unknown protocol "udp"`},
		{in: "9web:80", err: "invalid app name"},
		{in: "we b:80", err: "invalid app name"},
		{in: ":80", err: "invalid app name"},
	}
	for _, c := range cases {
		got, err := ParseServicePort(c.in)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("ParseServicePort(%q) = %+v, %v; want error containing %q", c.in, got, err, c.err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("ParseServicePort(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
		}
	}
}

func TestValidateServicePorts(t *testing.T) {
	ok := []ServicePort{{Name: "a", Port: 1}, {Name: "b", Port: 65535, Protocol: "tcp"}}
	if err := ValidateServicePorts(ok); err != nil {
		t.Fatal(err)
	}
	if ok[0].Protocol != ProtocolHTTP {
		t.Errorf("empty protocol became %q, want http", ok[0].Protocol)
	}
	for _, c := range []struct {
		ports []ServicePort
		err   string
	}{
		{[]ServicePort{{Name: "a", Port: 80}, {Name: "a", Port: 81}}, "declared twice"},
		{[]ServicePort{{Name: "A", Port: 80}}, "invalid app name"},
		{[]ServicePort{{Name: "a", Port: -1}}, "out of range"},
		{[]ServicePort{{Name: "a", Port: 80, Protocol: "udp"}}, "unknown protocol"},
		{make([]ServicePort, MaxServicePorts+1), "at most"},
	} {
		if err := ValidateServicePorts(c.ports); err == nil || !strings.Contains(err.Error(), c.err) {
			t.Errorf("ValidateServicePorts(%+v) = %v, want error containing %q", c.ports, err, c.err)
		}
	}
}

func TestServicePortsLabel(t *testing.T) {
	got, err := ImageServicePorts(map[string]string{
		LabelBackendAIServicePort: "jupyter:http:8888,ttyd:pty:7681,vscode:http:[8180,8181],sshd:tcp:2200,hidden:internal:9",
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []ServicePort{
		{Name: "jupyter", Port: 8888, Protocol: "http", Source: "image"},
		{Name: "ttyd", Port: 7681, Protocol: "http", Source: "image"},
		{Name: "vscode", Port: 8180, Protocol: "http", Source: "image"},
		{Name: "sshd", Port: 2200, Protocol: "tcp", Source: "image"},
	}
	if len(got) != len(want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("entry %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
	// corral's own label wins over Backend.AI's.
	got, _ = ImageServicePorts(map[string]string{LabelServicePorts: "web:http:80", LabelBackendAIServicePort: "x:http:1"})
	if len(got) != 1 || got[0].Name != "web" {
		t.Errorf("corral label: got %+v", got)
	}
	// Bad entries are skipped and named; good ones kept.
	got, err = ParseServicePortsLabel("web:http:80,broken,bad:http:99999,web:tcp:81")
	if len(got) != 1 || got[0].Port != 80 {
		t.Errorf("got %+v, want only web:80", got)
	}
	if err == nil || !strings.Contains(err.Error(), `"broken"`) || !strings.Contains(err.Error(), "out of range") || !strings.Contains(err.Error(), "declared twice") {
		t.Errorf("error %v does not name the skipped entries", err)
	}
}

func TestMergeServicePorts(t *testing.T) {
	got := MergeServicePorts(
		[]ServicePort{{Name: "jupyter", Port: 9000, Protocol: "http"}},
		[]ServicePort{{Name: "jupyter", Port: 8888, Protocol: "http", Source: "image"}, {Name: "tb", Port: 6006, Protocol: "http", Source: "image"}},
	)
	if len(got) != 2 || got[0].Port != 9000 || got[1].Name != "tb" {
		t.Errorf("got %+v", got)
	}
}
