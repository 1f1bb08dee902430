package agent

import (
	"os"
	"path/filepath"
	"strings"
	"time"
)

// DefaultGCRetention is how long an ended kernel's directory and logs
// stay on the agent when its config names no retention.
const DefaultGCRetention = 24 * time.Hour

// gcRetention is the configured retention of ended kernels' directories.
func (a *Agent) gcRetention() time.Duration {
	if a.cfg.GCRetention <= 0 {
		return DefaultGCRetention
	}
	return a.cfg.GCRetention
}

// runGC removes ended kernels' directories every quarter of the
// retention (between 100ms and 5 minutes) until the agent stops.
func (a *Agent) runGC() {
	ret := a.gcRetention()
	t := time.NewTicker(max(min(ret/4, 5*time.Minute), 100*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-a.ctx.Done():
			return
		case now := <-t.C:
			if n := len(a.collectKernelDirs(now)); n > 0 {
				a.logger.Info("removed directories and logs of ended kernels", "kernels", n, "retention", ret.String())
			}
		}
	}
}

// collectKernelDirs removes the directory (work dir and logs) of every
// kernel that has ended here, whose final status a server acknowledged
// (the local record is gone) and whose files have not changed for the
// retention; it returns the IDs removed. A kernel that still runs, or
// whose end is not yet acknowledged, keeps its directory.
func (a *Agent) collectKernelDirs(now time.Time) []string {
	root := filepath.Join(a.cfg.DataDir, "kernels")
	entries, err := os.ReadDir(root)
	if err != nil {
		a.logger.Warn("listing kernel directories failed", "dir", root, "error", err)
		return nil
	}
	recs, err := a.store.all()
	if err != nil {
		a.logger.Warn("reading local kernel records failed; kernel directories are kept", "error", err)
		return nil
	}
	keep := map[string]bool{}
	for _, rec := range recs {
		keep[rec.Kernel.ID] = true
	}
	a.mu.Lock()
	for id, r := range a.kernels {
		if !r.isDone() {
			keep[id] = true
		}
	}
	a.mu.Unlock()
	ret := a.gcRetention()
	mounts := mountPoints()
	var removed []string
	for _, e := range entries {
		id := e.Name()
		if !e.IsDir() || keep[id] {
			continue
		}
		dir := filepath.Join(root, id)
		if now.Sub(lastChange(dir)) < ret {
			continue
		}
		if m := mountedBelow(mounts, dir); m != "" {
			// A rootfs a crashed driver left mounted: removing through it
			// could reach what it mounts. Leave it to the operator.
			a.logger.Warn("kernel directory still has a mount; not removing it", "kernel_id", id, "mount", m)
			continue
		}
		if err := os.RemoveAll(dir); err != nil {
			a.logger.Warn("removing kernel directory failed", "kernel_id", id, "dir", dir, "error", err)
			continue
		}
		a.mu.Lock()
		if r, ok := a.kernels[id]; ok && r.isDone() {
			delete(a.kernels, id)
		}
		a.mu.Unlock()
		removed = append(removed, id)
	}
	return removed
}

// lastChange is the latest modification time of a kernel directory and
// of its logs (writes to a log do not touch the directory's own time).
func lastChange(dir string) time.Time {
	var last time.Time
	for _, p := range []string{dir, filepath.Join(dir, "stdout.log"), filepath.Join(dir, "stderr.log")} {
		if fi, err := os.Stat(p); err == nil && fi.ModTime().After(last) {
			last = fi.ModTime()
		}
	}
	return last
}

// mountPoints lists the mount points of this process's mount namespace
// (none where /proc is not readable).
func mountPoints() []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		// ID parent major:minor root mountpoint ...; spaces are escaped.
		if f := strings.Fields(line); len(f) > 4 {
			out = append(out, strings.ReplaceAll(f[4], "\\040", " "))
		}
	}
	return out
}

// mountedBelow returns a mount point at or below dir, "" when none is.
func mountedBelow(mounts []string, dir string) string {
	for _, m := range mounts {
		if m == dir || strings.HasPrefix(m, dir+"/") {
			return m
		}
	}
	return ""
}
