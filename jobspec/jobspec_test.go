package jobspec

import (
	"reflect"
	"strings"
	"testing"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/structs"
)

const psTemplate = `# a parameter-server job
type   = "batch"
driver = "runc"
image  = "registry.local/train:1"
command = ["python", "train.py"]
env = { EPOCHS = "3" }
cpu = 2
mem = "1G"
gpus = 1
slots = { "cuda.mig-1g.10gb" = 0 }
volumes = ["data:/home/work/data:ro"]
ports = ["jupyter", "web:8080/http"]
cluster_mode = "multi-node"
run_on = "all"

role "ps" {
  count   = 2
  image   = "registry.local/ps:1"
  cpu     = "0.5"
  mem     = 268435456
  command = ["ps-server"]
}

role "sub" {
  count = 1
  gpus  = 2
}
`

func TestParseTemplate(t *testing.T) {
	spec, err := ParseTemplate("ps.hcl", []byte(psTemplate))
	if err != nil {
		t.Fatal(err)
	}
	r := spec.Request
	want := api.CreateSessionRequest{
		Type: structs.SessionTypeBatch, Driver: "runc", Image: "registry.local/train:1",
		Command: []string{"python", "train.py"}, Env: map[string]string{"EPOCHS": "3"},
		Resources: structs.Slots{structs.SlotCPU: structs.Whole(2), structs.SlotMem: structs.Whole(1 << 30),
			structs.SlotCUDADevice: structs.Whole(1), "cuda.mig-1g.10gb": 0},
		Volumes:      []string{"data:/home/work/data:ro"},
		ServicePorts: []structs.ServicePort{{Name: "jupyter", Port: 8888, Protocol: "http"}, {Name: "web", Port: 8080, Protocol: "http"}},
		ClusterMode:  structs.ClusterModeMultiNode, RunOn: structs.RunOnAll, ClusterSize: 2,
		Roles: []api.RoleSpec{
			{Role: "ps", Count: 2, Image: "registry.local/ps:1", Command: []string{"ps-server"},
				Resources: structs.Slots{structs.SlotCPU: structs.QuantityScale / 2, structs.SlotMem: structs.Whole(256 << 20)}},
			{Role: "sub", Resources: structs.Slots{structs.SlotCUDADevice: structs.Whole(2)}},
		},
	}
	if !reflect.DeepEqual(r, want) {
		t.Fatalf("parsed\n%+v\nwant\n%+v", r, want)
	}
}

// TestParseJSON reads the JSON form of the same schema.
func TestParseJSON(t *testing.T) {
	src := `{
  "image": "busybox:1",
  "driver": "runc",
  "cluster_size": 1,
  "role": {"ps": {"count": 2, "image": "busybox:2", "cpu": 1}}
}`
	spec, err := ParseTemplate("t.json", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if len(spec.Request.Roles) != 1 || spec.Request.Roles[0].Count != 2 || spec.Request.Roles[0].Image != "busybox:2" {
		t.Fatalf("roles: %+v", spec.Request.Roles)
	}
	_, err = ParseTemplate("t.json", []byte("{\n  \"image\": \"a\",\n  \"cpu\": true\n}"))
	if err == nil || !strings.Contains(err.Error(), "t.json:3:10: invalid cpu") {
		t.Fatalf("bad JSON cpu: %v", err)
	}
}

func TestParseJobOrdersByDependencies(t *testing.T) {
	src := `
session "train" {
  command    = ["sh", "-c", "train"]
  depends_on = ["prep"]
}
session "report" {
  command    = ["sh", "-c", "report"]
  depends_on = ["train", "an-existing-session"]
  template   = "reporting"
}
session "prep" {
  command = ["sh", "-c", "prep"]
}
`
	job, err := ParseJob("pipe.hcl", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range job.Sessions {
		names = append(names, s.Name)
		if s.Request.Name != s.Name {
			t.Fatalf("request name %q for session %q", s.Request.Name, s.Name)
		}
	}
	if strings.Join(names, ",") != "prep,train,report" {
		t.Fatalf("order %v", names)
	}
	if job.Sessions[2].Request.Template != "reporting" || len(job.Sessions[2].Request.DependsOn) != 2 {
		t.Fatalf("report: %+v", job.Sessions[2].Request)
	}
	// Top-level attributes: one session.
	job, err = ParseJob("one.hcl", []byte(`name = "solo"
command = ["true"]`))
	if err != nil || len(job.Sessions) != 1 || job.Sessions[0].Name != "solo" {
		t.Fatalf("one session: %+v %v", job, err)
	}
}

// TestBadFiles: every mistake is refused with the file, line and column
// of the field, and says what is wrong.
func TestBadFiles(t *testing.T) {
	cases := []struct {
		name string
		job  bool // parse as a job file (else as a template)
		src  string
		want []string
	}{
		{"syntax", false, "image = \"a\"\ncpu = = 2\n", []string{"f.hcl:2:7:"}},
		{"unknown attribute", false, "image = \"a\"\n\nimgae = \"b\"\n", []string{"f.hcl:3:1:", "imgae", `Did you mean "image"?`}},
		{"cpu type", false, "cpu = [1]\n", []string{"f.hcl:1:7: invalid cpu", "number of cores"}},
		{"cpu zero", false, "cpu = 0\n", []string{"f.hcl:1:7: invalid cpu"}},
		{"mem", false, "\nmem = \"lots\"\n", []string{"f.hcl:2:7: invalid mem", "invalid size"}},
		{"type", false, "type = \"weekly\"\n", []string{"f.hcl:1:8: invalid type", `unknown value "weekly"`}},
		{"cluster_size range", false, "cluster_size = 100\n", []string{"f.hcl:1:16: invalid cluster_size", "from 1 to 64"}},
		{"command empty", false, "command = []\n", []string{"f.hcl:1:11: invalid command", "command is empty"}},
		{"env key", false, "env = { \"1X\" = \"a\" }\n", []string{"f.hcl:1:7: invalid env", `"1X"`}},
		{"volume", false, "volumes = [\"data\"]\n", []string{"f.hcl:1:11: invalid volumes", "NAME:/path"}},
		{"volume mode", false, "volumes = [\"data:/d:rx\"]\n", []string{"f.hcl:1:11: invalid volumes", "ro or rw"}},
		{"port", false, "ports = [\"nosuchapp\"]\n", []string{"f.hcl:1:9: invalid ports"}},
		{"ulimit", false, "ulimits = [\"bogus=1\"]\n", []string{"f.hcl:1:11: invalid ulimits", "unknown ulimit"}},
		{"name in template", false, "name = \"x\"\n", []string{"f.hcl:1:1: name in a template"}},
		{"depends_on in template", false, "image = \"a\"\ndepends_on = [\"x\"]\n", []string{"f.hcl:2:1: depends_on in a template"}},
		{"session in template", false, "session \"a\" {\n}\n", []string{"f.hcl:1:1: session block in a template"}},
		{"variable", false, "image = var.image\n", []string{"f.hcl:1:9:", "Variables not allowed"}},
		{"role unknown attribute", false, "role \"ps\" {\n  count = 2\n  memory = \"1G\"\n}\n", []string{"f.hcl:3:3:", `"memory"`}},
		{"role count", false, "role \"ps\" {\n  count = 0\n}\n", []string{"f.hcl:2:11: invalid count", "from 1 to 64"}},
		{"role name", false, "role \"ps2\" {\n}\n", []string{"f.hcl:1:6: invalid role name", "ps21"}},
		{"role main count", false, "role \"main\" {\n  count = 2\n}\n", []string{"f.hcl:2:11: invalid count", "one main kernel"}},
		{"role sub without subs", false, "role \"sub\" {\n  cpu = 1\n}\n", []string{"f.hcl:1:6: role sub without sub kernels"}},
		{"role sub count disagrees", false, "cluster_size = 3\nrole \"sub\" {\n  count = 1\n}\n", []string{"f.hcl:3:11: invalid count", "disagrees with cluster_size 3"}},
		{"duplicate role", false, "role \"ps\" {\n}\nrole \"ps\" {\n}\n", []string{"f.hcl:3:6: duplicate role", "line 1"}},
		{"role without label", false, "role {\n}\n", []string{"f.hcl:1:6:", "Missing name for role"}},
		{"slots type", false, "slots = 3\n", []string{"f.hcl:1:9: invalid slots", "map of slot names"}},
		{"two errors", false, "cpu = \"x\"\nmem = \"y\"\n", []string{"f.hcl:1:7: invalid cpu", "f.hcl:2:7: invalid mem"}},
		{"job cycle", true, "session \"a\" {\n  command = [\"true\"]\n  depends_on = [\"b\"]\n}\nsession \"b\" {\n  command = [\"true\"]\n  depends_on = [\"a\"]\n}\n",
			[]string{"f.hcl:1:1: dependency cycle", "a -> b -> a"}},
		{"job duplicate", true, "session \"a\" {\n}\nsession \"a\" {\n}\n", []string{"f.hcl:3:9: duplicate session"}},
		{"job attribute outside", true, "image = \"x\"\nsession \"a\" {\n}\n", []string{"f.hcl:1:1: image outside a session block"}},
		{"job name inside", true, "session \"a\" {\n  name = \"b\"\n}\n", []string{"f.hcl:2:3: name inside a session block"}},
		{"job bad name", true, "session \"abcd\" {\n}\n", []string{"f.hcl:1:9: invalid session name"}},
		{"job nested error", true, "session \"a\" {\n  command = [\"true\"]\n}\nsession \"b\" {\n  priority = 5000\n}\n", []string{"f.hcl:5:14: invalid priority"}},
		{"job empty dependency", true, "session \"a\" {\n  depends_on = [\"\"]\n}\n", []string{"f.hcl:2:16: invalid depends_on"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			if tc.job {
				_, err = ParseJob("f.hcl", []byte(tc.src))
			} else {
				_, err = ParseTemplate("f.hcl", []byte(tc.src))
			}
			if err == nil {
				t.Fatalf("accepted:\n%s", tc.src)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Fatalf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestMerge(t *testing.T) {
	base := &api.CreateSessionRequest{
		Type: structs.SessionTypeInteractive, Driver: "runc", Image: "img:1", Command: []string{"a"},
		Env:       map[string]string{"A": "1", "B": "2"},
		Resources: structs.Slots{structs.SlotCPU: structs.Whole(2), structs.SlotMem: structs.Whole(1 << 30)},
		Roles:     []api.RoleSpec{{Role: "ps", Count: 2, Image: "ps:1", Resources: structs.Slots{structs.SlotCPU: structs.Whole(1)}}},
		Volumes:   []string{"data:/d"}, ClusterSize: 2,
	}
	cases := []struct {
		name  string
		over  api.CreateSessionRequest
		check func(t *testing.T, m *api.CreateSessionRequest)
	}{
		{"nothing set keeps the template", api.CreateSessionRequest{}, func(t *testing.T, m *api.CreateSessionRequest) {
			if !reflect.DeepEqual(m, base) {
				t.Fatalf("%+v", m)
			}
		}},
		{"flags override", api.CreateSessionRequest{Image: "img:2", Name: "n", Command: []string{"b", "c"}, ClusterSize: 3, Type: structs.SessionTypeBatch},
			func(t *testing.T, m *api.CreateSessionRequest) {
				if m.Image != "img:2" || m.Name != "n" || strings.Join(m.Command, " ") != "b c" || m.ClusterSize != 3 || m.Type != structs.SessionTypeBatch || m.Driver != "runc" {
					t.Fatalf("%+v", m)
				}
			}},
		{"resources and env key by key", api.CreateSessionRequest{Env: map[string]string{"B": "x"}, Resources: structs.Slots{structs.SlotCPU: structs.Whole(4)}},
			func(t *testing.T, m *api.CreateSessionRequest) {
				if m.Env["A"] != "1" || m.Env["B"] != "x" || m.Resources[structs.SlotCPU] != structs.Whole(4) || m.Resources[structs.SlotMem] != structs.Whole(1<<30) {
					t.Fatalf("%+v", m)
				}
			}},
		{"roles by name", api.CreateSessionRequest{Roles: []api.RoleSpec{{Role: "ps", Count: 3}, {Role: "sub", Image: "sub:1"}}},
			func(t *testing.T, m *api.CreateSessionRequest) {
				if len(m.Roles) != 2 || m.Roles[0].Count != 3 || m.Roles[0].Image != "ps:1" || m.Roles[0].Resources[structs.SlotCPU] != structs.Whole(1) || m.Roles[1].Image != "sub:1" {
					t.Fatalf("%+v", m.Roles)
				}
			}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := Merge(base, &tc.over)
			tc.check(t, m)
		})
	}
	// The template is not modified by a merge.
	Merge(base, &api.CreateSessionRequest{Env: map[string]string{"A": "z"}, Roles: []api.RoleSpec{{Role: "ps", Image: "ps:9"}}})
	if base.Env["A"] != "1" || base.Roles[0].Image != "ps:1" {
		t.Fatalf("base modified: %+v", base)
	}
}
