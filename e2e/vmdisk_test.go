package e2e

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/corral-dev/corral/structs"
)

// TestVMDiskImage boots a raw ext4 disk image (made with mkfs.ext4 -d, no
// root tools) as a vm session's root through the CLI, server and agent:
// the command reads the disk's marker file and exits 3 (FAILURE, exit code
// 3), the image file is unchanged, and driver exec refuses the path with
// one line. CORRAL_VM_TEST_CACHE names a guest cache other than the shared
// one.
func TestVMDiskImage(t *testing.T) {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 is not installed (make deps installs qemu-system-x86)")
	}
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Skip("mkfs.ext4 is not installed (e2fsprogs)")
	}
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Skipf("a static busybox for the test disk: %v", err)
	}
	cache := os.Getenv("CORRAL_VM_TEST_CACHE")
	prep := exec.Command("../scripts/vm-guest.sh")
	if cache != "" {
		prep.Args = append(prep.Args, cache)
		t.Setenv("CORRAL_VM_KERNEL", filepath.Join(cache, "vmlinuz"))
		t.Setenv("CORRAL_VM_INITRD", filepath.Join(cache, "initramfs.cpio.gz"))
	}
	if out, err := prep.CombinedOutput(); err != nil {
		t.Skipf("cannot prepare the VM guest (make vm-guest): %v: %s", err, strings.TrimSpace(string(out)))
	}
	pluginDir := t.TempDir()
	build := exec.Command("go", "build", "-o", filepath.Join(pluginDir, "corral-driver-vm"), "./cmd/corral-driver-vm")
	build.Dir = ".."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the vm plugin: %v\n%s", err, out)
	}

	// The disk: world-readable, in directories all may search.
	imgDir := t.TempDir()
	for _, d := range []string{imgDir, filepath.Dir(imgDir)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	root := filepath.Join(imgDir, "root")
	if err := os.MkdirAll(filepath.Join(root, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "bin", "busybox"), bb, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"sh", "cat"} {
		if err := os.Symlink("busybox", filepath.Join(root, "bin", a)); err != nil {
			t.Fatal(err)
		}
	}
	marker := fmt.Sprintf("e2e-disk-marker-%d", os.Getpid())
	if err := os.WriteFile(filepath.Join(root, "marker.txt"), []byte(marker+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(imgDir, "root.raw")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", root, img, "16M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
	if err := os.Chmod(img, 0o644); err != nil {
		t.Fatal(err)
	}
	hash := func() string {
		b, err := os.ReadFile(img)
		if err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("%x", sha256.Sum256(b))
	}
	before := hash()

	t.Setenv("CORRAL_VM_ACCEL", "tcg")
	dataDir := t.TempDir()
	reapKernels(t, dataDir)
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

	r := cli(t, addr, "session", "create", "-type", "batch", "-driver", "exec", "-image", img, "--", "true")
	if r.code == 0 || !strings.Contains(r.stderr, "only driver vm boots") {
		t.Errorf("driver exec with a disk image: exit %d, stderr %q; want a refusal", r.code, r.stderr)
	}

	mustCLI(t, addr, 0, "session", "create", "-type", "batch", "-name", "vm-disk", "-cpu", "1", "-mem", "192M",
		"-driver", "vm", "-image", img, "--", "sh", "-c", "cat /marker.txt; echo scribble >/marker.txt; exit 3")
	eventually(t, 4*time.Minute, "session vm-disk ends", func() error {
		d, err := sessionDetail(t, addr, "vm-disk")
		if err != nil {
			return err
		}
		if d.Session.Status != structs.SessionTerminated {
			return fmt.Errorf("vm-disk is %s (%s)", d.Session.Status, d.Session.StatusInfo)
		}
		if k := d.Kernels[0]; d.Session.Result != structs.ResultFailure || k.ExitCode == nil || *k.ExitCode != 3 {
			t.Errorf("vm-disk: result %s, kernel %+v; want FAILURE with exit code 3", d.Session.Result, k)
		}
		return nil
	})
	if r := mustCLI(t, addr, 0, "session", "logs", "vm-disk"); !strings.Contains(r.stdout, marker) {
		t.Errorf("vm-disk logs = %q, want the disk's marker %q", r.stdout, marker)
	}
	if after := hash(); after != before {
		t.Errorf("the disk image changed: the VM wrote to it")
	}
}
