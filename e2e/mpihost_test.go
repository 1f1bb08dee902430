package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/corral-dev/corral/e2e/testbed"
	"golang.org/x/sys/unix"
)

// mpiHostRig runs the MPI image's programs as plain processes in the
// test bed's hosts' network namespaces (the benchmark's baseline): the
// image's root filesystem unpacked once, entered with chroot, and mpirun
// starting its remote daemon through an rsh agent that enters the other
// host's namespace (nsenter), so no ssh is involved.
type mpiHostRig struct {
	root string
	pids map[*testbed.Host]int // a process in each host's namespace
}

const mpiHostRsh = `#!/bin/sh
# Open MPI's rsh agent for the host baseline: [options] HOST COMMAND...
while [ $# -gt 0 ]; do case "$1" in -*) shift ;; *) break ;; esac; done
host=$1
shift
line=$(grep "^$host " /opt/mpi/hosts.map) || { echo "nsrsh: unknown host $host" >&2; exit 255; }
set -- $line "$*"
# ip pid name cpus command
pin=
[ "$4" != - ] && pin="taskset -c $4"
exec nsenter --net=/proc/$2/ns/net unshare --uts sh -c 'echo "$1" >/proc/sys/kernel/hostname; shift; exec "$@"' sh "$3" $pin sh -c "$5"
`

// newMPIHostRig unpacks the image's root filesystem and starts a process in
// each host's namespace whose /proc/PID/ns/net the rsh agent enters.
func newMPIHostRig(t *testing.T, hosts []*testbed.Host) *mpiHostRig {
	t.Helper()
	dir, err := os.MkdirTemp("", "corral-mpi-host-")
	if err != nil {
		t.Fatal(err)
	}
	var mounts []string
	t.Cleanup(func() {
		ok := true
		for i := len(mounts) - 1; i >= 0; i-- {
			if err := syscall.Unmount(mounts[i], syscall.MNT_DETACH); err != nil {
				t.Logf("unmounting %s: %v; leaving %s", mounts[i], err, dir)
				ok = false
			}
		}
		if ok {
			os.RemoveAll(dir)
		}
	})
	if b, err := exec.Command("tar", "-xzf", mpiRootfs(t), "-C", dir).CombinedOutput(); err != nil {
		t.Fatalf("unpacking the MPI root filesystem: %v\n%s", err, b)
	}
	// Devices of our own (no bind mount of the host's /dev).
	for _, d := range []struct {
		name         string
		major, minor uint32
	}{{"null", 1, 3}, {"zero", 1, 5}, {"random", 1, 8}, {"urandom", 1, 9}} {
		p := filepath.Join(dir, "dev", d.name)
		_ = os.Remove(p)
		if err := unix.Mknod(p, unix.S_IFCHR|0o666, int(unix.Mkdev(d.major, d.minor))); err != nil {
			t.Fatalf("mknod %s: %v", p, err)
		}
		_ = os.Chmod(p, 0o666)
	}
	// A sysfs of its own (read-only) lets Open MPI's hwloc see the cores
	// and bind within the affinity the baseline's processes are given.
	for _, m := range []struct {
		dst, fstype string
		flags       uintptr
	}{{"proc", "proc", 0}, {"dev/shm", "tmpfs", 0}, {"sys", "sysfs", syscall.MS_RDONLY}} {
		p := filepath.Join(dir, m.dst)
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := syscall.Mount(m.fstype, p, m.fstype, m.flags, ""); err != nil {
			t.Fatalf("mounting %s on %s: %v", m.fstype, p, err)
		}
		mounts = append(mounts, p)
	}
	r := &mpiHostRig{root: dir, pids: map[*testbed.Host]int{}}
	for _, h := range hosts {
		ctx, cancel := context.WithCancel(context.Background())
		sl := h.Command(ctx, "sleep", "3600")
		if err := sl.Start(); err != nil {
			cancel()
			t.Fatal(err)
		}
		t.Cleanup(func() { cancel(); _ = sl.Wait() })
		r.pids[h] = sl.Process.Pid
	}
	if err := os.WriteFile(filepath.Join(dir, "opt/mpi/nsrsh"), []byte(mpiHostRsh), 0o755); err != nil {
		t.Fatal(err)
	}
	return r
}

// pingpong runs pingpong under mpirun from host `from` (rank 0) to host
// `to` (rank 1), each pinned to cpus[its IP] when set.
func (r *mpiHostRig) pingpong(t *testing.T, from, to *testbed.Host, cpus map[string]string, args ...string) string {
	t.Helper()
	var hmap strings.Builder
	for h, pid := range r.pids {
		c := cpus[h.IP.String()]
		if c == "" {
			c = "-"
		}
		fmt.Fprintf(&hmap, "%s %d %s %s\n", h.IP, pid, h.Name, c)
	}
	if err := os.WriteFile(filepath.Join(r.root, "opt/mpi/hosts.map"), []byte(hmap.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	pin := ""
	if c := cpus[from.IP.String()]; c != "" {
		// Open MPI binds the remote rank by mpirun's own topology (cores
		// it may use: the pinned one), which a plain process's affinity
		// does not stop as a kernel's cpuset does: keep the pinning.
		pin = "env OMPI_MCA_hwloc_base_binding_policy=none taskset -c " + c
	}
	script := fmt.Sprintf(`echo %s >/proc/sys/kernel/hostname; cd /opt/mpi && exec %s mpirun -np 2 --host %s,%s --mca plm_rsh_agent /opt/mpi/nsrsh ./pingpong %s`,
		from.Name, pin, from.IP, to.IP, strings.Join(args, " "))
	cmd := from.Command(context.Background(), "chroot", r.root, "unshare", "--uts", "sh", "-c", script)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "OMPI_ALLOW_RUN_AS_ROOT=1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1"}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("MPI baseline %s -> %s: %v\n%s", from.Name, to.Name, err, out)
	}
	return string(out)
}
