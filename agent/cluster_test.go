package agent

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"

	"golang.org/x/crypto/ssh"

	execdriver "github.com/corral-dev/corral/drivers/exec"
	"github.com/corral-dev/corral/internal/kernelssh"
	"github.com/corral-dev/corral/plugins/drivers"
	"github.com/corral-dev/corral/structs"
)

func sessionKey(t *testing.T) (priv string, pub string) {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	blk, err := ssh.MarshalPrivateKey(k, "")
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(blk)), strings.TrimSpace(string(ssh.MarshalAuthorizedKey(s.PublicKey())))
}

func threePeers() []structs.ClusterPeer {
	return []structs.ClusterPeer{
		{Hostname: "main1", Addr: "10.0.0.2", Rank: 0, Slots: 2},
		{Hostname: "sub1", Addr: "10.0.0.3", Rank: 1, Slots: 1},
		{Hostname: "sub2", Addr: "10.0.0.4", Rank: 2, Slots: 0},
	}
}

func TestClusterFilesAndEnv(t *testing.T) {
	priv, pub := sessionKey(t)
	tests := []struct {
		name       string
		k          *structs.Kernel
		etc, bin   string
		listen     string
		hostfile   string
		machine    string
		env        map[string]string
		knownHosts string
	}{
		{
			name: "overlay container kernel, sub1",
			k: &structs.Kernel{Hostname: "sub1", Launch: &structs.ClusterLaunch{NodeRank: 1, NumNodes: 3, MasterAddr: "10.0.0.2", MasterPort: 29500,
				SSHPort: 2222, Peers: threePeers(), Barrier: true, SSHPrivateKey: priv, AuthorizedKeys: []string{pub}}},
			etc: kernelEtcDir, bin: kernelBinDir, listen: "0.0.0.0",
			hostfile: "main1 slots=2\nsub1 slots=1\nsub2 slots=1\n",
			machine:  "main1:2\nsub1:1\nsub2:1\n",
			env: map[string]string{"CORRAL_NODE_RANK": "1", "NODE_RANK": "1", "CORRAL_NUM_NODES": "3", "WORLD_SIZE": "3",
				"CORRAL_MASTER_ADDR": "10.0.0.2", "MASTER_ADDR": "10.0.0.2", "CORRAL_MASTER_PORT": "29500", "MASTER_PORT": "29500",
				"CORRAL_CLUSTER_HOSTS": "main1,sub1,sub2", "CORRAL_CLUSTER_SIZE": "3",
				"CORRAL_HOSTFILE": "/etc/corral/hostfile", "CORRAL_MACHINEFILE": "/etc/corral/machinefile", "CORRAL_LAUNCH": "/etc/corral/launch.json",
				"OMPI_MCA_plm_rsh_agent": "/.corral/bin/ssh", "HYDRA_LAUNCHER": "ssh", "HYDRA_LAUNCHER_EXEC": "/.corral/bin/ssh",
				"OMPI_ALLOW_RUN_AS_ROOT": "1"},
			knownHosts: "sub1,[sub1]:2222,10.0.0.3,[10.0.0.3]:2222 " + pub,
		},
		{
			name: "host-networked exec kernel, main1",
			k: &structs.Kernel{Hostname: "main1", Launch: &structs.ClusterLaunch{NodeRank: 0, NumNodes: 2, MasterAddr: "192.168.1.5", MasterPort: 24580,
				SSHPort: 20004, Peers: []structs.ClusterPeer{{Hostname: "main1", Addr: "192.168.1.5", Rank: 0, Slots: 8}, {Hostname: "sub1", Addr: "192.168.1.6", Rank: 1, Slots: 8}},
				SSHPrivateKey: priv, HostNetwork: true}},
			etc: "/data/kernels/k1/corral-etc", bin: "/data/kernels/k1/corral-bin", listen: "192.168.1.5",
			hostfile: "main1 slots=8\nsub1 slots=8\n",
			machine:  "main1:8\nsub1:8\n",
			env: map[string]string{"CORRAL_NODE_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "192.168.1.5", "MASTER_PORT": "24580",
				"CORRAL_HOSTFILE": "/data/kernels/k1/corral-etc/hostfile", "CORRAL_LAUNCH": "/data/kernels/k1/corral-etc/launch.json",
				"OMPI_MCA_plm_rsh_agent": "/data/kernels/k1/corral-bin/ssh", "HYDRA_LAUNCHER_EXEC": "/data/kernels/k1/corral-bin/ssh"},
			knownHosts: "sub1,[sub1]:20004,192.168.1.6,[192.168.1.6]:20004 " + pub,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			files, err := clusterFiles(tc.k, tc.etc)
			if err != nil {
				t.Fatal(err)
			}
			if files["hostfile"] != tc.hostfile {
				t.Errorf("hostfile %q, want %q", files["hostfile"], tc.hostfile)
			}
			if files["machinefile"] != tc.machine {
				t.Errorf("machinefile %q, want %q", files["machinefile"], tc.machine)
			}
			if !strings.Contains(files["ssh/known_hosts"], tc.knownHosts+"\n") {
				t.Errorf("known_hosts %q lacks %q", files["ssh/known_hosts"], tc.knownHosts)
			}
			if files["ssh/authorized_keys"] != pub+"\n" {
				t.Errorf("authorized_keys %q, want the session key once", files["ssh/authorized_keys"])
			}
			for _, want := range []string{"IdentityFile " + tc.etc + "/ssh/id_ed25519", "UserKnownHostsFile " + tc.etc + "/ssh/known_hosts", "StrictHostKeyChecking yes", "Host sub1\n    HostName "} {
				if !strings.Contains(files["ssh_config"], want) {
					t.Errorf("ssh_config lacks %q:\n%s", want, files["ssh_config"])
				}
			}
			// The launch file is what corral-kernel reads.
			dir := t.TempDir()
			if err := writeClusterDir(dir, files); err != nil {
				t.Fatal(err)
			}
			l, err := kernelssh.LoadLaunch(filepath.Join(dir, "launch.json"))
			if err != nil {
				t.Fatal(err)
			}
			if l.ListenAddr != tc.listen || l.SSHPort != tc.k.Launch.SSHPort || l.Rank != tc.k.Launch.NodeRank || l.Barrier != tc.k.Launch.Barrier || len(l.Peers) != len(tc.k.Launch.Peers) {
				t.Errorf("launch file %+v does not match the launch %+v", l, tc.k.Launch)
			}
			if _, err := l.Signer(); err != nil {
				t.Errorf("session key in the launch dir: %v", err)
			}
			if keys, err := l.AuthorizedKeys(); err != nil || len(keys) != 1 {
				t.Errorf("authorized keys: %d, %v", len(keys), err)
			}
			env := clusterEnv(tc.k.Launch, tc.etc, tc.bin)
			for key, want := range tc.env {
				if env[key] != want {
					t.Errorf("%s=%q, want %q", key, env[key], want)
				}
			}
		})
	}
	if _, err := clusterFiles(&structs.Kernel{Launch: &structs.ClusterLaunch{}}, kernelEtcDir); err == nil || !strings.Contains(err.Error(), "session key") {
		t.Errorf("launch without key: %v, want an error about the session key", err)
	}
}

func TestWrapCommand(t *testing.T) {
	img := &drivers.ImageConfig{Entrypoint: []string{"/entry.sh"}, Cmd: []string{"default"}}
	tests := []struct {
		name                 string
		cmd                  []string
		ic                   *drivers.ImageConfig
		serve, container     bool
		wantCmd, wantEntry   []string
		wantImgCmd           []string
		commandLineInKernels []string
	}{
		{"container run", []string{"mpirun", "-np", "3"}, img, false, true, []string{"mpirun", "-np", "3"},
			[]string{"/h", "run", "-launch", "/l", "--", "/entry.sh"}, []string{"default"}, nil},
		{"container serve", []string{"mpirun"}, img, true, true, nil, []string{"/h", "serve", "-launch", "/l"}, nil, nil},
		{"container without image config", []string{"prog"}, nil, false, true, []string{"prog"}, []string{"/h", "run", "-launch", "/l", "--"}, nil, nil},
		{"exec run", []string{"./prog", "a"}, nil, false, false, []string{"/h", "run", "-launch", "/l", "--", "./prog", "a"}, nil, nil, nil},
		{"exec serve", []string{"./prog"}, nil, true, false, []string{"/h", "serve", "-launch", "/l"}, nil, nil, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := &drivers.TaskConfig{Command: tc.cmd, ImageConfig: tc.ic}
			wrapCommand(cfg, tc.serve, tc.container, "/h", "/l")
			if !reflect.DeepEqual(cfg.Command, tc.wantCmd) {
				t.Errorf("command %q, want %q", cfg.Command, tc.wantCmd)
			}
			var entry, cmd []string
			if cfg.ImageConfig != nil {
				entry, cmd = cfg.ImageConfig.Entrypoint, cfg.ImageConfig.Cmd
			}
			if !reflect.DeepEqual(entry, tc.wantEntry) || !reflect.DeepEqual(cmd, tc.wantImgCmd) {
				t.Errorf("image entrypoint %q cmd %q, want %q %q", entry, cmd, tc.wantEntry, tc.wantImgCmd)
			}
		})
	}
	if !reflect.DeepEqual(img.Entrypoint, []string{"/entry.sh"}) {
		t.Errorf("the pulled image's config was changed: %q", img.Entrypoint)
	}
}

// captureDriver records the task configs it is asked to start; its tasks
// exit 0 at once.
type captureDriver struct {
	countingDriver
	name string
	mu   sync.Mutex
	cfgs []*drivers.TaskConfig
}

func (d *captureDriver) Name() string { return d.name }

func (d *captureDriver) Start(ctx context.Context, cfg *drivers.TaskConfig) (*drivers.TaskHandle, error) {
	d.mu.Lock()
	d.cfgs = append(d.cfgs, cfg)
	d.mu.Unlock()
	return d.countingDriver.Start(ctx, cfg)
}

// TestAgentStartsClusterKernel runs a host-networked exec cluster kernel
// through the agent: its driver gets the wrapped command, the mounts and
// the variables, no overlay, and hosts for its peers; the files are in the
// kernel's directory and the helper next to them.
func TestAgentStartsClusterKernel(t *testing.T) {
	dir := t.TempDir()
	helper := filepath.Join(t.TempDir(), "corral-kernel")
	if err := os.WriteFile(helper, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	priv, _ := sessionKey(t)
	d := &captureDriver{countingDriver: countingDriver{exits: map[string]chan *drivers.ExitResult{}}, name: "exec"}
	a := testAgent(t, dir, d)
	a.cfg.KernelHelper = helper
	defer a.stopForTest()
	k := &structs.Kernel{ID: "k1", SessionID: "s1", Driver: "exec", Hostname: "sub1", Role: "sub", Idx: 1, Status: structs.KernelScheduled,
		Command: []string{"./train.sh"}, Env: map[string]string{"MASTER_PORT": "1234"},
		Network: &structs.KernelNetwork{VNI: 7, Address: "10.1.0.3/24", Underlay: "127.0.0.2"},
		Launch: &structs.ClusterLaunch{NodeRank: 1, NumNodes: 2, MasterAddr: "127.0.0.1", MasterPort: 24576, SSHPort: 20000, SSHPrivateKey: priv, HostNetwork: true,
			Peers: []structs.ClusterPeer{{Hostname: "main1", Addr: "127.0.0.1", Rank: 0, Slots: 1}, {Hostname: "sub1", Addr: "127.0.0.2", Rank: 1, Slots: 1}}}}
	if wired(k, d) {
		t.Error("a host-networked kernel would get an overlay")
	}
	r := newKernelRunner(a, k, d)
	cfg := r.taskConfig()
	if !r.start(context.Background(), a.logger, cfg) {
		t.Fatalf("start failed: %+v", a.deliverAll())
	}
	if len(d.cfgs) != 1 {
		t.Fatalf("driver started %d tasks", len(d.cfgs))
	}
	got := d.cfgs[0]
	etc, bin := filepath.Join(got.TaskDir, clusterEtcSubdir), filepath.Join(got.TaskDir, clusterBinSubdir)
	wantCmd := []string{filepath.Join(bin, "corral-kernel"), "run", "-launch", filepath.Join(etc, "launch.json"), "--", "./train.sh"}
	if !reflect.DeepEqual(got.Command, wantCmd) {
		t.Errorf("command %q, want %q", got.Command, wantCmd)
	}
	wantMounts := []drivers.Mount{{Source: etc, Destination: etc, ReadOnly: true}, {Source: bin, Destination: bin, ReadOnly: true}}
	if !reflect.DeepEqual(got.Mounts, wantMounts) {
		t.Errorf("mounts %+v, want %+v", got.Mounts, wantMounts)
	}
	if got.Env["MASTER_PORT"] != "1234" || got.Env["CORRAL_MASTER_PORT"] != "24576" || got.Env["NODE_RANK"] != "1" || got.Env["OMPI_MCA_plm_rsh_agent"] != filepath.Join(bin, "ssh") {
		t.Errorf("env: MASTER_PORT=%q (the user's 1234 kept?) CORRAL_MASTER_PORT=%q NODE_RANK=%q OMPI_MCA_plm_rsh_agent=%q",
			got.Env["MASTER_PORT"], got.Env["CORRAL_MASTER_PORT"], got.Env["NODE_RANK"], got.Env["OMPI_MCA_plm_rsh_agent"])
	}
	if got.NetNSPath != "" || !reflect.DeepEqual(got.Hosts, map[string]string{"main1": "127.0.0.1", "sub1": "127.0.0.2"}) {
		t.Errorf("netns %q hosts %v: want none and the peers' agent addresses", got.NetNSPath, got.Hosts)
	}
	if b, err := os.ReadFile(filepath.Join(etc, "hostfile")); err != nil || string(b) != "main1 slots=1\nsub1 slots=1\n" {
		t.Errorf("hostfile %q, %v", b, err)
	}
	if target, err := os.Readlink(filepath.Join(bin, "ssh")); err != nil || target != "corral-kernel" {
		t.Errorf("ssh link -> %q, %v", target, err)
	}
	if _, err := os.Stat(filepath.Join(bin, "corral-kernel")); err != nil {
		t.Error(err)
	}

	// Without the helper the kernel fails with the reason.
	a.cfg.KernelHelper = filepath.Join(t.TempDir(), "missing")
	k2 := k.Copy()
	k2.ID = "k2"
	r2 := newKernelRunner(a, k2, d)
	if r2.start(context.Background(), a.logger, r2.taskConfig()) {
		t.Fatal("started without the helper")
	}
	if u := lastStatus(a.deliverAll(), "k2"); u == nil || u.Status != structs.KernelError || !strings.Contains(u.Info, "corral-kernel") {
		t.Errorf("last update %+v, want ERROR naming corral-kernel", u)
	}
}

// TestClusterKernelsOverSSH runs two host-networked cluster kernels
// through the agent and the host driver, as real processes running the
// built corral-kernel: main1 passes the barrier once sub1 serves, then
// runs a command on sub1 through $OMPI_MCA_plm_rsh_agent with the options
// Open MPI passes; sub1 (serve) ends 0 when stopped.
func TestClusterKernelsOverSSH(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the host driver runs kernels as root")
	}
	helper := filepath.Join(t.TempDir(), "corral-kernel")
	build := exec.Command("go", "build", "-o", helper, "../cmd/corral-kernel")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building corral-kernel: %v\n%s", err, out)
	}
	ln, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Skipf("no 127.0.0.2: %v", err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	priv, _ := sessionKey(t)
	d := execdriver.NewHost(nil)
	a := testAgent(t, t.TempDir(), d)
	a.cfg.KernelHelper = helper
	defer a.stopForTest()
	peers := []structs.ClusterPeer{{Hostname: "main1", Addr: "127.0.0.1", Rank: 0, Slots: 1}, {Hostname: "sub1", Addr: "127.0.0.2", Rank: 1, Slots: 1}}
	launch := func(rank int, serve bool) *structs.ClusterLaunch {
		return &structs.ClusterLaunch{NodeRank: rank, NumNodes: 2, MasterAddr: "127.0.0.1", MasterPort: 1, SSHPort: port, Peers: peers,
			Barrier: true, Serve: serve, SSHPrivateKey: priv, HostNetwork: true}
	}
	main := &structs.Kernel{ID: "kmain", SessionID: "s1", Driver: d.Name(), Hostname: "main1", Role: "main", Idx: 1, Status: structs.KernelScheduled,
		Command: []string{"/bin/sh", "-c", `"$OMPI_MCA_plm_rsh_agent" -x -o StrictHostKeyChecking=no sub1 echo remote rank '$CORRAL_NODE_RANK'; exit 3`},
		Launch:  launch(0, false)}
	sub := &structs.Kernel{ID: "ksub", SessionID: "s1", Driver: d.Name(), Hostname: "sub1", Role: "sub", Idx: 1, Status: structs.KernelScheduled,
		Command: []string{"/bin/false"}, Launch: launch(1, true)}
	// main1 first: it must wait at the barrier for sub1.
	rm := newKernelRunner(a, main, d)
	go rm.run(a.ctx)
	rs := newKernelRunner(a, sub, d)
	go rs.run(a.ctx)
	<-rm.done
	rs.requestStop("main1 ended")
	<-rs.done
	ups := a.deliverAll()
	if u := lastStatus(ups, "kmain"); u == nil || u.ExitCode == nil || *u.ExitCode != 3 {
		t.Errorf("main1's last update %+v, want exit code 3", u)
	}
	if u := lastStatus(ups, "ksub"); u == nil || u.ExitCode == nil || *u.ExitCode != 0 {
		t.Errorf("sub1's last update %+v, want exit code 0 (serve stopped)", u)
	}
	out, _ := os.ReadFile(filepath.Join(a.kernelDir("kmain"), "stdout.log"))
	if string(out) != "remote rank 1\n" {
		errOut, _ := os.ReadFile(filepath.Join(a.kernelDir("kmain"), "stderr.log"))
		t.Errorf("main1's stdout %q, want \"remote rank 1\\n\" (stderr %q)", out, errOut)
	}
}
