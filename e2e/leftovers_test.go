package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// What a standalone agent's kernels leave on the host, found without the
// agent's help so that a test can check that a destroy cleaned up and a
// failed test can clean up itself: the kernels' processes (by the
// CORRAL_KERNEL_ID in their environment, inside containers too), the task
// shims (by their directory, below the agent's data dir, on their command
// line), mounts below the data dir (runc roots), cgroups named after a
// kernel (the exec driver's <parent>/<ID>, the runc driver's
// <parent>/runc-<ID>) and the runc driver's container state.

// agentKernelIDs lists the kernels that the agent with data dir dir ran:
// it keeps a directory for each (with its logs) after destroying it.
func agentKernelIDs(dir string) []string {
	ents, _ := os.ReadDir(filepath.Join(dir, "kernels"))
	var ids []string
	for _, e := range ents {
		if e.IsDir() {
			ids = append(ids, e.Name())
		}
	}
	return ids
}

// eachProc calls f with the pid of every process and the named file of its
// /proc directory (the process may be gone by then: f gets nil).
func eachProc(file string, f func(pid int, content []byte)) {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", pid, file))
		if err == nil {
			f(pid, b)
		}
	}
}

// kernelProcs returns, by kernel ID, the processes of the given kernels.
func kernelProcs(ids []string) map[string][]int {
	out := map[string][]int{}
	eachProc("environ", func(pid int, env []byte) {
		for v := range bytes.SplitSeq(env, []byte{0}) {
			if id, ok := bytes.CutPrefix(v, []byte("CORRAL_KERNEL_ID=")); ok && slices.Contains(ids, string(id)) {
				out[string(id)] = append(out[string(id)], pid)
			}
		}
	})
	return out
}

// shimProcs returns the task shims of the agent with data dir dir: a shim
// runs as `corral __corral_shim DIR/kernels/<ID>/...`.
func shimProcs(dir string) []int {
	var pids []int
	eachProc("cmdline", func(pid int, cmdline []byte) {
		args := strings.Split(string(cmdline), "\x00")
		if len(args) >= 3 && args[1] == "__corral_shim" && strings.HasPrefix(args[2], filepath.Join(dir, "kernels")+"/") {
			pids = append(pids, pid)
		}
	})
	return pids
}

// mountsBelow returns the mount points below dir, deepest first.
func mountsBelow(dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		// Octal escapes (\040 for a space) as the kernel writes them.
		mp, err := strconv.Unquote(`"` + strings.ReplaceAll(fields[4], `"`, `\"`) + `"`)
		if err != nil {
			mp = fields[4]
		}
		if strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	slices.SortFunc(out, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
	return out
}

// kernelCgroups returns the cgroups named after one of the kernels, in
// every hierarchy (v1 or v2), deepest first.
func kernelCgroups(ids []string) []string {
	const root = "/sys/fs/cgroup"
	var out []string
	_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		if strings.Count(strings.TrimPrefix(p, root), "/") > 4 {
			return filepath.SkipDir
		}
		name := d.Name()
		for _, id := range ids {
			if name == id || name == "runc-"+id {
				out = append(out, p)
				return filepath.SkipDir
			}
		}
		return nil
	})
	slices.SortFunc(out, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
	return out
}

// leftovers describes what is left on the host of the kernels that the
// agent with data dir dir ran.
func leftovers(dir string) []string {
	ids := agentKernelIDs(dir)
	var out []string
	for id, pids := range kernelProcs(ids) {
		for _, pid := range pids {
			out = append(out, fmt.Sprintf("process %d (%s) of kernel %s", pid, procName(pid), id))
		}
	}
	for _, pid := range shimProcs(dir) {
		out = append(out, fmt.Sprintf("shim process %d", pid))
	}
	for _, m := range mountsBelow(dir) {
		out = append(out, "mount "+m)
	}
	for _, cg := range kernelCgroups(ids) {
		out = append(out, "cgroup "+cg)
	}
	for _, id := range ids {
		for _, p := range []string{filepath.Join(dir, "runc", id), filepath.Join(dir, "kernels", id, "container")} {
			if _, err := os.Lstat(p); err == nil {
				out = append(out, "container state "+p)
			}
		}
	}
	slices.Sort(out)
	return out
}

func procName(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return strings.TrimSpace(string(b))
}

// checkNoLeftovers fails the test unless, within a few seconds, nothing is
// left on the host of the kernels that the agent with data dir dir ran: no
// process, shim, mount, cgroup or container state.
func checkNoLeftovers(t *testing.T, dir string) {
	t.Helper()
	if len(agentKernelIDs(dir)) == 0 {
		t.Fatalf("no kernel dirs in %s: the leak check would check nothing", dir)
	}
	eventually(t, 10*time.Second, "nothing left of the destroyed kernels", func() error {
		if l := leftovers(dir); len(l) > 0 {
			return fmt.Errorf("left behind:\n  %s", strings.Join(l, "\n  "))
		}
		return nil
	})
}

// reapKernels cleans up, at the end of a test, whatever the kernels of a
// standalone agent with data dir dir left on the host (agents leave kernels
// running when they stop, so that a restart reattaches): it kills their
// processes and shims, unmounts their roots and removes their cgroups, so
// that a failed test leaks nothing.
func reapKernels(t *testing.T, dir string) {
	t.Cleanup(func() {
		ids := agentKernelIDs(dir)
		kill := func() (n int) {
			for _, pids := range kernelProcs(ids) {
				for _, pid := range pids {
					_ = syscall.Kill(pid, syscall.SIGKILL)
					n++
				}
			}
			for _, pid := range shimProcs(dir) {
				_ = syscall.Kill(pid, syscall.SIGKILL)
				n++
			}
			return n
		}
		for deadline := time.Now().Add(5 * time.Second); kill() > 0 && time.Now().Before(deadline); {
			time.Sleep(50 * time.Millisecond)
		}
		for _, m := range mountsBelow(dir) {
			_ = syscall.Unmount(m, syscall.MNT_DETACH)
		}
		for _, cg := range kernelCgroups(ids) {
			_ = syscall.Rmdir(cg)
		}
	})
}
