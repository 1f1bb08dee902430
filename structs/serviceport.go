package structs

import (
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// ServicePort is an app a session serves on a port of its main1 kernel
// (Jupyter, TensorBoard, a web terminal, ssh): the servers tunnel TCP
// connections to it and proxy HTTP to it.
type ServicePort struct {
	// Name is how users address the app (`corral session app ID NAME`,
	// /v1/sessions/{id}/apps/{name}/).
	Name string `json:"name"`
	// Port is the TCP port inside the kernel.
	Port int `json:"port"`
	// Protocol is ProtocolHTTP (the HTTP proxy serves it too) or
	// ProtocolTCP (tunnels only).
	Protocol string `json:"protocol"`
	// Source says where the app was declared: "" (the create request)
	// or ServicePortFromImage (the image's labels).
	Source string `json:"source,omitempty"`
}

// Protocols of a service port.
const (
	ProtocolHTTP = "http"
	ProtocolTCP  = "tcp"
)

// ServicePortFromImage marks the apps an image's labels declare.
const ServicePortFromImage = "image"

// Image labels that declare service ports, "name:proto:port,...": corral's
// own and Backend.AI's.
const (
	LabelServicePorts         = "corral.service-ports"
	LabelBackendAIServicePort = "ai.backend.service-ports"
)

// MaxServicePorts bounds the apps of one session.
const MaxServicePorts = 32

// WellKnownServicePorts are the apps a create request may name without a
// port (`-port jupyter`).
var WellKnownServicePorts = map[string]ServicePort{
	"jupyter":     {Name: "jupyter", Port: 8888, Protocol: ProtocolHTTP},
	"jupyterlab":  {Name: "jupyterlab", Port: 8888, Protocol: ProtocolHTTP},
	"tensorboard": {Name: "tensorboard", Port: 6006, Protocol: ProtocolHTTP},
	"vscode":      {Name: "vscode", Port: 8080, Protocol: ProtocolHTTP},
	"code-server": {Name: "code-server", Port: 8080, Protocol: ProtocolHTTP},
	"ttyd":        {Name: "ttyd", Port: 7681, Protocol: ProtocolHTTP},
	"mlflow":      {Name: "mlflow", Port: 5000, Protocol: ProtocolHTTP},
	"streamlit":   {Name: "streamlit", Port: 8501, Protocol: ProtocolHTTP},
	"gradio":      {Name: "gradio", Port: 7860, Protocol: ProtocolHTTP},
	"ssh":         {Name: "ssh", Port: 22, Protocol: ProtocolTCP},
}

// wellKnownNames lists WellKnownServicePorts' names, sorted, for errors.
func wellKnownNames() string {
	names := make([]string, 0, len(WellKnownServicePorts))
	for n := range WellKnownServicePorts {
		names = append(names, n)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

// servicePortNameRe is what an app's name looks like: it is a URL path
// segment and a CLI argument.
var servicePortNameRe = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,31}$`)

// ParseServicePort reads "NAME[:PORT][/http|tcp]" (the CLI's -port): a
// name alone must be a well-known app; a protocol defaults to the
// well-known one's, else http.
func ParseServicePort(s string) (ServicePort, error) {
	spec, proto, hasProto := strings.Cut(strings.TrimSpace(s), "/")
	name, portStr, hasPort := strings.Cut(spec, ":")
	sp := ServicePort{Name: strings.ToLower(name)}
	known, isKnown := WellKnownServicePorts[sp.Name]
	switch {
	case hasPort:
		p, err := strconv.Atoi(portStr)
		if err != nil {
			return ServicePort{}, fmt.Errorf("service port %q: port %q is not a number", s, portStr)
		}
		sp.Port = p
	case isKnown:
		sp.Port = known.Port
	default:
		return ServicePort{}, fmt.Errorf("service port %q: give NAME:PORT[/http|tcp]; names known without a port are %s", s, wellKnownNames())
	}
	switch {
	case hasProto:
		sp.Protocol = strings.ToLower(proto)
	case isKnown:
		sp.Protocol = known.Protocol
	default:
		sp.Protocol = ProtocolHTTP
	}
	if err := sp.Validate(); err != nil {
		return ServicePort{}, err
	}
	return sp, nil
}

// Validate checks one service port's name, port and protocol.
func (p ServicePort) Validate() error {
	if !servicePortNameRe.MatchString(p.Name) {
		return fmt.Errorf("invalid app name %q: use 1-32 lowercase letters, digits, '-' or '_', starting with a letter", p.Name)
	}
	if p.Port < 1 || p.Port > 65535 {
		return fmt.Errorf("app %s: port %d is out of range [1, 65535]", p.Name, p.Port)
	}
	if p.Protocol != ProtocolHTTP && p.Protocol != ProtocolTCP {
		return fmt.Errorf("app %s: unknown protocol %q: use http or tcp", p.Name, p.Protocol)
	}
	return nil
}

// ValidateServicePorts checks a session's apps: each valid, names unique,
// at most MaxServicePorts. An empty protocol becomes http.
func ValidateServicePorts(ports []ServicePort) error {
	if len(ports) > MaxServicePorts {
		return fmt.Errorf("%d apps declared; a session may have at most %d", len(ports), MaxServicePorts)
	}
	seen := map[string]bool{}
	for i := range ports {
		if ports[i].Protocol == "" {
			ports[i].Protocol = ProtocolHTTP
		}
		if err := ports[i].Validate(); err != nil {
			return err
		}
		if seen[ports[i].Name] {
			return fmt.Errorf("app %s is declared twice: app names must be unique", ports[i].Name)
		}
		seen[ports[i].Name] = true
	}
	return nil
}

// ParseServicePortsLabel reads an image label "name:proto:port,...":
// proto is http or tcp (Backend.AI's pty and preopen are served as http
// and tcp); a port list "[8080,8081]" contributes its first port. It
// returns the valid entries and an error naming the ones it skipped.
func ParseServicePortsLabel(v string) ([]ServicePort, error) {
	var out []ServicePort
	var bad []string
	for _, item := range splitOutsideBrackets(v) {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		parts := strings.SplitN(item, ":", 3)
		if len(parts) != 3 {
			bad = append(bad, fmt.Sprintf("%q (want name:proto:port)", item))
			continue
		}
		proto := strings.ToLower(parts[1])
		switch proto {
		case "pty", "preopen":
			proto = ProtocolHTTP
		case "internal":
			continue // an app the image keeps to itself
		}
		portStr := strings.Trim(parts[2], "[] ")
		portStr, _, _ = strings.Cut(portStr, ",")
		p, err := strconv.Atoi(strings.TrimSpace(portStr))
		if err != nil {
			bad = append(bad, fmt.Sprintf("%q (port is not a number)", item))
			continue
		}
		sp := ServicePort{Name: strings.ToLower(parts[0]), Port: p, Protocol: proto, Source: ServicePortFromImage}
		if err := sp.Validate(); err != nil {
			bad = append(bad, err.Error())
			continue
		}
		if slices.ContainsFunc(out, func(o ServicePort) bool { return o.Name == sp.Name }) {
			bad = append(bad, fmt.Sprintf("app %s declared twice", sp.Name))
			continue
		}
		out = append(out, sp)
	}
	if len(out) > MaxServicePorts {
		out = out[:MaxServicePorts]
		bad = append(bad, fmt.Sprintf("more than %d apps", MaxServicePorts))
	}
	if len(bad) > 0 {
		return out, fmt.Errorf("service-ports label: skipped %s", strings.Join(bad, "; "))
	}
	return out, nil
}

// ImageServicePorts reads the service ports an image's labels declare
// (corral's label wins over Backend.AI's).
func ImageServicePorts(labels map[string]string) ([]ServicePort, error) {
	for _, l := range []string{LabelServicePorts, LabelBackendAIServicePort} {
		if v, ok := labels[l]; ok {
			return ParseServicePortsLabel(v)
		}
	}
	return nil, nil
}

// MergeServicePorts returns a session's apps: those its request declared,
// then those of main1's image that the request did not name.
func MergeServicePorts(declared, image []ServicePort) []ServicePort {
	out := append([]ServicePort(nil), declared...)
	for _, p := range image {
		if !slices.ContainsFunc(out, func(o ServicePort) bool { return o.Name == p.Name }) {
			out = append(out, p)
		}
	}
	return out
}

// splitOutsideBrackets splits s at commas that are not inside [...].
func splitOutsideBrackets(s string) []string {
	var out []string
	depth, start := 0, 0
	for i, c := range s {
		switch c {
		case '[':
			depth++
		case ']':
			if depth > 0 {
				depth--
			}
		case ',':
			if depth == 0 {
				out = append(out, s[start:i])
				start = i + 1
			}
		}
	}
	return append(out, s[start:])
}
