package server

import (
	"errors"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/structs"
)

func TestJobSettings(t *testing.T) {
	for _, tc := range []struct {
		name    string
		req     api.CreateSessionRequest
		cluster bool
		want    [3]string
		err     string
	}{
		{"batch cluster defaults", api.CreateSessionRequest{Type: structs.SessionTypeBatch}, true, [3]string{"main", "any", "barrier"}, ""},
		{"interactive cluster defaults", api.CreateSessionRequest{Type: structs.SessionTypeInteractive}, true, [3]string{"all", "main", "barrier"}, ""},
		{"explicit", api.CreateSessionRequest{Type: structs.SessionTypeBatch, RunOn: "all", FailOn: "main", StartOrder: "unordered"}, true, [3]string{"all", "main", "unordered"}, ""},
		{"single kernel keeps none", api.CreateSessionRequest{Type: structs.SessionTypeBatch, RunOn: "all"}, false, [3]string{}, ""},
		{"bad run_on", api.CreateSessionRequest{RunOn: "sub"}, true, [3]string{}, `unknown run_on "sub"`},
		{"bad fail_on", api.CreateSessionRequest{FailOn: "all"}, true, [3]string{}, `unknown fail_on "all"`},
		{"bad start_order", api.CreateSessionRequest{StartOrder: "now"}, false, [3]string{}, `unknown start_order "now"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, f, s, err := jobSettings(&tc.req, tc.cluster)
			if tc.err != "" {
				if code, msg := errorStatus(err); code != http.StatusBadRequest || !strings.Contains(msg, tc.err) {
					t.Fatalf("got %d %q, want 400 containing %q", code, msg, tc.err)
				}
				return
			}
			if err != nil || [3]string{r, f, s} != tc.want {
				t.Fatalf("got %v %v, want %v", [3]string{r, f, s}, err, tc.want)
			}
		})
	}
}

func TestKernelOptions(t *testing.T) {
	for _, tc := range []struct {
		name string
		req  api.CreateSessionRequest
		want *structs.KernelOptions
		err  string
	}{
		{"none", api.CreateSessionRequest{}, nil, ""},
		{"all", api.CreateSessionRequest{Shm: "8G", Ulimits: []string{"memlock=unlimited", "nofile=1024:65536"}, CapAdd: []string{"ipc_lock", "CAP_SYS_PTRACE", "IPC_LOCK"}, Network: "host", InfiniBand: true},
			&structs.KernelOptions{ShmBytes: 8 << 30, Ulimits: []structs.Ulimit{{Name: "memlock", Soft: -1, Hard: -1}, {Name: "nofile", Soft: 1024, Hard: 65536}},
				CapAdd: []string{"CAP_IPC_LOCK", "CAP_SYS_PTRACE"}, Network: "host", InfiniBand: true}, ""},
		{"infiniband alone", api.CreateSessionRequest{InfiniBand: true}, &structs.KernelOptions{InfiniBand: true}, ""},
		{"bad shm", api.CreateSessionRequest{Shm: "lots"}, nil, `shm: invalid size "lots"`},
		{"tiny shm", api.CreateSessionRequest{Shm: "1K"}, nil, "out of range [1M, 64T]"},
		{"bad ulimit", api.CreateSessionRequest{Ulimits: []string{"files=10"}}, nil, `unknown ulimit "files"`},
		{"ulimit twice", api.CreateSessionRequest{Ulimits: []string{"nofile=10", "nofile=20"}}, nil, "ulimit nofile is given twice"},
		{"soft above hard", api.CreateSessionRequest{Ulimits: []string{"nofile=20:10"}}, nil, "soft limit above the hard limit"},
		{"bad cap", api.CreateSessionRequest{CapAdd: []string{"FLY"}}, nil, `cap_add: unknown capability "FLY"`},
		{"network none", api.CreateSessionRequest{Network: "none"}, &structs.KernelOptions{Network: structs.NetworkNone}, ""},
		{"bad network", api.CreateSessionRequest{Network: "bridge"}, nil, `unknown network "bridge"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := kernelOptions(&tc.req)
			if tc.err != "" {
				if code, msg := errorStatus(err); code != http.StatusBadRequest || !strings.Contains(msg, tc.err) {
					t.Fatalf("got %d %q, want 400 containing %q", code, msg, tc.err)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %+v %v, want %+v", got, err, tc.want)
			}
		})
	}
}

func TestOptionsPolicy(t *testing.T) {
	user := &structs.AccessKey{AccessKey: "AKUSER", User: "u"}
	admin := &structs.AccessKey{AccessKey: "AKADMIN", User: "root", Admin: true}
	open := &structs.ResourcePolicy{Name: "hpc", MaxShmBytes: 16 << 30, MaxMemlockBytes: -1, AllowedCapabilities: []string{"CAP_IPC_LOCK"},
		AllowedUlimits: []string{"memlock", "nofile", "rtprio"}, AllowHostNetwork: true, AllowInfiniBand: true}
	fresh := &structs.ResourcePolicy{Name: "fresh"}
	kernel := func(o structs.KernelOptions) *structs.Kernel {
		return &structs.Kernel{Hostname: "sub1", Resources: structs.Slots{structs.SlotMem: structs.Whole(4 << 30)}, Options: &o}
	}
	for _, tc := range []struct {
		name string
		key  *structs.AccessKey
		pol  *structs.ResourcePolicy
		opts structs.KernelOptions
		err  string
	}{
		{"shm up to mem", user, nil, structs.KernelOptions{ShmBytes: 4 << 30}, ""},
		{"shm above mem", user, fresh, structs.KernelOptions{ShmBytes: 8 << 30}, "kernel sub1: shm of 8GiB is above policy fresh's limit of 4GiB (the kernel's mem)"},
		{"shm above mem, no policy", user, nil, structs.KernelOptions{ShmBytes: 8 << 30}, "policy (none"},
		{"shm under policy cap", user, open, structs.KernelOptions{ShmBytes: 8 << 30}, ""},
		{"shm above policy cap", user, open, structs.KernelOptions{ShmBytes: 32 << 30}, "above policy hpc's limit of 16GiB"},
		{"memlock up to mem", user, fresh, structs.KernelOptions{Ulimits: []structs.Ulimit{{Name: "memlock", Soft: 1 << 30, Hard: 4 << 30}}}, ""},
		{"memlock unlimited by default", user, fresh, structs.KernelOptions{Ulimits: []structs.Ulimit{{Name: "memlock", Soft: -1, Hard: -1}}}, "memlock=unlimited is above policy fresh's memlock limit"},
		{"memlock unlimited allowed", user, open, structs.KernelOptions{Ulimits: []structs.Ulimit{{Name: "memlock", Soft: -1, Hard: -1}}}, ""},
		{"nofile by default", user, fresh, structs.KernelOptions{Ulimits: []structs.Ulimit{{Name: "nofile", Soft: 65536, Hard: 65536}}}, ""},
		{"rtprio denied by default", user, fresh, structs.KernelOptions{Ulimits: []structs.Ulimit{{Name: "rtprio", Soft: 10, Hard: 10}}}, "ulimit rtprio is not allowed by policy fresh"},
		{"rtprio listed", user, open, structs.KernelOptions{Ulimits: []structs.Ulimit{{Name: "rtprio", Soft: 10, Hard: 10}}}, ""},
		{"stack not listed", user, open, structs.KernelOptions{Ulimits: []structs.Ulimit{{Name: "stack", Soft: 10, Hard: 10}}}, "ulimit stack is not allowed by policy hpc (allowed: memlock, nofile, rtprio)"},
		{"cap denied by default", user, fresh, structs.KernelOptions{CapAdd: []string{"CAP_IPC_LOCK"}}, "capability CAP_IPC_LOCK is not allowed by policy fresh (allowed: none)"},
		{"cap allowed", user, open, structs.KernelOptions{CapAdd: []string{"CAP_IPC_LOCK"}}, ""},
		{"cap not listed", user, open, structs.KernelOptions{CapAdd: []string{"CAP_SYS_ADMIN"}}, "(allowed: CAP_IPC_LOCK)"},
		{"host network denied", user, fresh, structs.KernelOptions{Network: "host"}, "host networking is not allowed by policy fresh"},
		{"host network allowed", user, open, structs.KernelOptions{Network: "host"}, ""},
		{"infiniband denied", user, nil, structs.KernelOptions{InfiniBand: true}, "InfiniBand devices are not allowed"},
		{"infiniband allowed", user, open, structs.KernelOptions{InfiniBand: true}, ""},
		{"admin unrestricted", admin, fresh, structs.KernelOptions{ShmBytes: 64 << 30, CapAdd: []string{"CAP_SYS_ADMIN"}, Network: "host", InfiniBand: true,
			Ulimits: []structs.Ulimit{{Name: "memlock", Soft: -1, Hard: -1}, {Name: "rtprio", Soft: 99, Hard: 99}}}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkOptionsPolicy(tc.key, tc.pol, kernel(tc.opts))
			if tc.err == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			var he *httpError
			if !errors.As(err, &he) || he.code != http.StatusForbidden || !strings.Contains(he.msg, tc.err) {
				t.Fatalf("got %v, want 403 containing %q", err, tc.err)
			}
		})
	}
}

// TestSessionKeys: the session's key is an OpenSSH ed25519 private key
// whose public half is the authorized_keys line.
func TestSessionKeys(t *testing.T) {
	priv, auth, err := sessionKeys("s1")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(priv, "-----BEGIN OPENSSH PRIVATE KEY-----") {
		t.Fatalf("private key is not OpenSSH PEM: %.40q", priv)
	}
	signer, err := ssh.ParsePrivateKey([]byte(priv))
	if err != nil {
		t.Fatal(err)
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(auth))
	if err != nil {
		t.Fatal(err)
	}
	if pub.Type() != ssh.KeyAlgoED25519 || string(pub.Marshal()) != string(signer.PublicKey().Marshal()) {
		t.Fatalf("authorized key %q does not match the private key", auth)
	}
	if priv2, _, _ := sessionKeys("s2"); priv2 == priv {
		t.Fatal("two sessions got the same key")
	}
}
