package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/structs"
)

// vmWait bounds each wait for a VM session: a software-emulated (TCG) boot
// on a busy 2-core machine takes 10 to 40 seconds.
const vmWait = 4 * time.Minute

// TestVMDriver runs `corral dev -plugin-dir` with the vm driver plugin (its
// default configuration: the guest of `make vm-guest`, here prepared by
// the test, and TCG, as KVM does not boot stock guests on this kind of
// machine): a batch session prints a line, writes into a volume (shared
// live with the VM: the file is on the host) and exits 0 (SUCCESS), another
// exits 3 (FAILURE, exit code 3), `session exec` runs in a running VM,
// which has the kernel's egress address on its tap-backed eth0, and
// destroying
// that session leaves no qemu process and no VM files.
func TestVMDriver(t *testing.T) {
	pluginDir := vmPluginDir(t)
	dataDir := t.TempDir()
	reapKernels(t, dataDir)
	t.Cleanup(func() { killQemusUnder(dataDir) })
	ports := serverPorts{http: freePort(t), rpc: freePort(t), serf: freePort(t)}
	addr := "http://" + ports.http
	start(t, "dev", "dev", "-data-dir", dataDir, "-http", ports.http, "-rpc", ports.rpc, "-serf", ports.serf, "-plugin-dir", pluginDir)
	eventually(t, 30*time.Second, "dev writes its admin token", func() error {
		for _, d := range []string{filepath.Join(dataDir, "server"), dataDir} {
			if tok, ok := adminTokenIn(d); ok {
				apiTokens.Store(addr, tok)
				return nil
			}
		}
		return fmt.Errorf("no admin token yet")
	})
	eventually(t, 60*time.Second, "the agent advertises the vm driver", func() error {
		r := cli(t, addr, "node", "list", "-json")
		var agents []*structs.Agent
		if err := json.Unmarshal([]byte(r.stdout), &agents); err != nil {
			return fmt.Errorf("node list: %v: %s %s", err, r.stdout, r.stderr)
		}
		if len(agents) != 1 || !agents[0].HasDriver("vm") {
			return fmt.Errorf("agents: %s", r.stdout)
		}
		return nil
	})

	create := func(typ, name string, cmd ...string) {
		a := []string{"session", "create", "-type", typ, "-name", name, "-cpu", "1", "-mem", "192M", "-driver", "vm"}
		if name == "vm-ok" {
			a = append(a, "-volume", "data:/mnt/data")
		}
		mustCLI(t, addr, 0, append(append(a, "--"), cmd...)...)
	}
	mustCLI(t, addr, 0, "volume", "create", "data")
	started := time.Now()
	create("batch", "vm-ok", "sh", "-c", "echo hello from the vm; echo written in the vm > /mnt/data/vm.txt")
	create("batch", "vm-fail", "sh", "-c", "echo failing >&2; exit 3")
	create("interactive", "vm-shell", "sleep", "100000")

	ok := waitVMStatus(t, addr, "vm-ok", structs.SessionTerminated)
	t.Logf("FIGURE e2e_vm_batch_seconds=%.1f (create to TERMINATED, TCG, three VMs at once)", time.Since(started).Seconds())
	if ok.Session.Result != structs.ResultSuccess || ok.Kernels[0].ExitCode == nil || *ok.Kernels[0].ExitCode != 0 {
		t.Errorf("vm-ok: result %s, kernel %+v; want SUCCESS with exit code 0", ok.Session.Result, ok.Kernels[0])
	}
	if r := mustCLI(t, addr, 0, "session", "logs", "vm-ok"); !strings.Contains(r.stdout, "hello from the vm") {
		t.Errorf("vm-ok logs = %q", r.stdout)
	}
	// The volume is shared live (virtio-9p): the file is on the host, the
	// exec kernels' uid's, as an exec kernel's would be.
	written, _ := filepath.Glob(filepath.Join(dataDir, "volumes", "*", "data", "vm.txt"))
	if len(written) != 1 {
		t.Errorf("the VM's file in volume data is not on the host (found %v)", written)
	} else if b, err := os.ReadFile(written[0]); err != nil || string(b) != "written in the vm\n" {
		t.Errorf("%s = %q, %v", written[0], b, err)
	} else if fi, err := os.Stat(written[0]); err == nil {
		if uid := fi.Sys().(*syscall.Stat_t).Uid; uid != 65534 {
			t.Errorf("%s belongs to uid %d, want the exec kernels' (nobody, 65534)", written[0], uid)
		}
	}
	fail := waitVMStatus(t, addr, "vm-fail", structs.SessionTerminated)
	if k := fail.Kernels[0]; fail.Session.Result != structs.ResultFailure || k.ExitCode == nil || *k.ExitCode != 3 {
		t.Errorf("vm-fail: result %s, kernel %+v; want FAILURE with exit code 3", fail.Session.Result, k)
	}

	waitVMStatus(t, addr, "vm-shell", structs.SessionRunning)
	// RUNNING is qemu started; the guest agent answers once it booted.
	var r result
	eventually(t, vmWait, "exec in the running VM", func() error {
		r = cli(t, addr, "session", "exec", "vm-shell", "--", "sh", "-c",
			"echo inside $(uname -r); ip -4 -o addr show eth0 | awk '{print \"addr\", $4}'; exit 4")
		if r.code != 4 {
			return fmt.Errorf("exec: exit %d: %s %s", r.code, r.stdout, r.stderr)
		}
		return nil
	})
	if !strings.Contains(r.stdout, "inside ") {
		t.Errorf("exec stdout = %q, want the kernel release", r.stdout)
	}
	// The VM is on the kernel's egress network: its eth0 has the kernel's
	// address (drivers/vm's TestNetwork checks traffic over the tap).
	_, guestAddr, found := strings.Cut(r.stdout, "addr ")
	if !found || !strings.Contains(guestAddr, "/") {
		t.Errorf("the VM has no address on eth0: exec stdout %q", r.stdout)
	}
	kernel := kernelOf(t, addr, "vm-shell").ID
	if len(qemuProcs(kernel)) == 0 {
		t.Fatal("no qemu process runs for the running VM session")
	}
	mustCLI(t, addr, 0, "session", "destroy", "vm-shell")
	waitVMStatus(t, addr, "vm-shell", structs.SessionTerminated)
	eventually(t, 60*time.Second, "no qemu and no VM files are left", func() error {
		if left := qemuProcs(kernel); len(left) > 0 {
			return fmt.Errorf("qemu processes %v still run", left)
		}
		var vmDirs []string
		_ = filepath.Walk(dataDir, func(p string, info os.FileInfo, err error) error {
			if err == nil && info.IsDir() && info.Name() == "vm" && strings.Contains(p, kernel) {
				vmDirs = append(vmDirs, p)
			}
			return nil
		})
		if len(vmDirs) > 0 {
			return fmt.Errorf("VM dirs %v left", vmDirs)
		}
		return nil
	})
}

// waitVMStatus waits (long: VMs boot slowly under TCG) until the session
// has status want.
func waitVMStatus(t *testing.T, addr, ref string, want structs.SessionStatus) *api.SessionDetail {
	t.Helper()
	var d *api.SessionDetail
	eventually(t, vmWait, "session "+ref+" is "+string(want), func() error {
		var err error
		if d, err = sessionDetail(t, addr, ref); err != nil {
			return err
		}
		if d.Session.Status != want {
			return fmt.Errorf("%s is %s (%s)", ref, d.Session.Status, d.Session.StatusInfo)
		}
		return nil
	})
	return d
}

// qemuProcs returns the pids of the qemu processes of kernel (their -name
// is "corral-<kernel ID>").
func qemuProcs(kernel string) []string {
	var pids []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		argv := strings.Split(string(b), "\x00")
		if strings.HasPrefix(filepath.Base(argv[0]), "qemu-system") && strings.Contains(string(b), "corral-"+kernel) {
			pids = append(pids, e.Name())
		}
	}
	return pids
}

// killQemusUnder kills the qemu processes whose command line names a path
// under dir (their initramfs is in the kernel's directory): what a failed
// test left running.
func killQemusUnder(dir string) {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), "qemu-system") && strings.Contains(string(b), dir+"/") {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// vmPluginDir prepares the guest (make vm-guest) and builds the vm driver
// plugin into a plugin directory, and sets TCG (the KVM probe cannot
// succeed on this kind of machine); it skips where qemu or the guest's
// parts are missing.
func vmPluginDir(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 is not installed (make deps installs qemu-system-x86)")
	}
	if out, err := exec.Command("../scripts/vm-guest.sh").CombinedOutput(); err != nil {
		t.Skipf("cannot prepare the VM guest (make vm-guest): %v: %s", err, strings.TrimSpace(string(out)))
	}
	pluginDir := t.TempDir()
	build := exec.Command("go", "build", "-o", filepath.Join(pluginDir, "corral-driver-vm"), "./cmd/corral-driver-vm")
	build.Dir = ".."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the vm plugin: %v\n%s", err, out)
	}
	t.Setenv("CORRAL_VM_ACCEL", "tcg")
	return pluginDir
}

// TestVMClusterMixed runs a cluster session on `corral dev` whose main1
// is a runc kernel and whose role "vm" is one VM kernel (vm1, booting the
// same busybox image as its root): both get
// the session's overlay and hosts. corral-kernel's start barrier (ssh
// both ways) runs in each; then vm1 serves a line on TCP 7000 and fetches
// main1's line from main1:7001 by name, and main1 fetches vm1's from
// vm1:7000. The session ends SUCCESS with both lines in the logs.
func TestVMClusterMixed(t *testing.T) {
	if why := runcUnavailable(); why != "" {
		t.Skip(why)
	}
	pluginDir := vmPluginDir(t)
	ref := startRegistry(t, busyboxImage(t), "corral/busybox:1")
	dir := t.TempDir()
	reapKernels(t, filepath.Join(dir, "agent"))
	t.Cleanup(func() { killQemusUnder(dir) })
	addr := startDev(t, dir, "-plugin-dir", pluginDir)
	agentRunsRunc(t, addr)
	eventually(t, 60*time.Second, "the agent advertises the vm driver", func() error {
		r := cli(t, addr, "node", "list", "-json")
		var agents []*structs.Agent
		if err := json.Unmarshal([]byte(r.stdout), &agents); err != nil {
			return fmt.Errorf("node list: %v: %s %s", err, r.stdout, r.stderr)
		}
		if len(agents) != 1 || !agents[0].HasDriver("vm") {
			return fmt.Errorf("agents: %s", r.stdout)
		}
		return nil
	})
	job := filepath.Join(t.TempDir(), "mixed.hcl")
	src := fmt.Sprintf(`type    = "batch"
driver  = "runc"
image   = %q
cpu     = 0.2
mem     = "64M"
command = ["sh", "-c", <<-EOT
  echo "line from $(hostname)" | nc -l -p 7001 &
  for i in $(seq 600); do
    r=$(nc -w 5 vm1 7000 </dev/null) && [ -n "$r" ] && break
    sleep 0.5
  done
  [ -n "$r" ] || { echo "no answer from vm1"; exit 1; }
  echo "main1 got: $r"
  wait
  EOT
]

role "vm" {
  count   = 1
  driver  = "vm"
  cpu     = 1
  mem     = "192M"
  command = ["sh", "-c", <<-EOT
    echo "line from $(hostname) $(uname -r)" | nc -l -p 7000 &
    for i in $(seq 600); do
      r=$(nc -w 5 main1 7001 </dev/null) && [ -n "$r" ] && break
      sleep 0.5
    done
    [ -n "$r" ] || { echo "no answer from main1"; exit 1; }
    echo "vm1 got: $r"
    wait
    EOT
  ]
}
`, ref)
	if err := os.WriteFile(job, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	started := time.Now()
	mustCLI(t, addr, 0, "template", "create", "mixed", "-f", job)
	mustCLI(t, addr, 0, "session", "create", "-template", "mixed", "-name", "mixed")
	d := waitVMStatus(t, addr, "mixed", structs.SessionTerminated)
	t.Logf("FIGURE e2e_vm_mixed_cluster_seconds=%.1f (create to TERMINATED, runc main1 + TCG VM vm1)", time.Since(started).Seconds())
	drivers := map[string]string{}
	for _, k := range d.Kernels {
		drivers[k.Hostname] = k.Driver
	}
	main := mustCLI(t, addr, 0, "session", "logs", "mixed", "-kernel", "main1").stdout
	vm := mustCLI(t, addr, 0, "session", "logs", "mixed", "-kernel", "vm1").stdout
	if d.Session.Result != structs.ResultSuccess {
		t.Fatalf("mixed: result %s (%s); kernels %v\nmain1:\n%s\nvm1:\n%s", d.Session.Result, d.Session.StatusInfo, drivers, main, vm)
	}
	if drivers["main1"] != "runc" || drivers["vm1"] != "vm" {
		t.Errorf("kernels' drivers %v, want main1 runc and vm1 vm", drivers)
	}
	if !strings.Contains(main, "main1 got: line from vm1") {
		t.Errorf("main1 did not fetch vm1's line: %q", main)
	}
	if !strings.Contains(vm, "vm1 got: line from main1") {
		t.Errorf("vm1 did not fetch main1's line: %q", vm)
	}
}
