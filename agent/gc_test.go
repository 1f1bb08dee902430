package agent

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/corral-dev/corral/structs"
)

// TestCollectKernelDirs checks which kernel directories the agent removes:
// only those of kernels that ended, whose end a server acknowledged, and
// whose files are older than the retention.
func TestCollectKernelDirs(t *testing.T) {
	dir := t.TempDir()
	store, err := openLocalStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.close() })
	a := &Agent{cfg: Config{DataDir: dir, GCRetention: time.Hour}, logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		kernels: map[string]*kernelRunner{}, store: store}
	now := time.Now()
	old := now.Add(-2 * time.Hour)
	mk := func(id string, at time.Time, logAt time.Time) {
		t.Helper()
		d := a.kernelDir(id)
		if err := os.MkdirAll(filepath.Join(d, "work"), 0o755); err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{"stdout.log", "stderr.log"} {
			p := filepath.Join(d, f)
			if err := os.WriteFile(p, []byte("out\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Chtimes(p, logAt, logAt); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.Chtimes(d, at, at); err != nil {
			t.Fatal(err)
		}
	}
	mk("ended", old, old)       // acknowledged long ago: goes
	mk("recent", old, now)      // its log was written a minute ago: stays
	mk("unacked", old, old)     // final report not yet acknowledged: stays
	mk("running", old, old)     // still running (quiet logs): stays
	mk("done-runner", old, old) // ended in this process, acknowledged: goes
	mk("young", now, now)       // ended just now: stays
	if err := store.put(&kernelRecord{Kernel: &structs.Kernel{ID: "unacked"}, Final: &structs.KernelUpdate{KernelID: "unacked", Status: structs.KernelTerminated}}); err != nil {
		t.Fatal(err)
	}
	running := &kernelRunner{id: "running", done: make(chan struct{})}
	done := &kernelRunner{id: "done-runner", done: make(chan struct{})}
	close(done.done)
	a.kernels["running"], a.kernels["done-runner"] = running, done
	// A stray file in kernels/ is not a kernel directory.
	if err := os.WriteFile(filepath.Join(dir, "kernels", "README"), nil, 0o644); err != nil {
		t.Fatal(err)
	}

	removed := a.collectKernelDirs(now)
	slices.Sort(removed)
	if !slices.Equal(removed, []string{"done-runner", "ended"}) {
		t.Fatalf("removed %v, want done-runner and ended", removed)
	}
	for _, id := range []string{"ended", "done-runner"} {
		if _, err := os.Stat(a.kernelDir(id)); !os.IsNotExist(err) {
			t.Fatalf("directory of %s still there: %v", id, err)
		}
	}
	for _, id := range []string{"recent", "unacked", "running", "young"} {
		if _, err := os.Stat(filepath.Join(a.kernelDir(id), "stdout.log")); err != nil {
			t.Fatalf("directory of %s removed: %v", id, err)
		}
	}
	if _, ok := a.kernels["done-runner"]; ok {
		t.Fatal("the ended runner is still tracked")
	}
	if _, ok := a.kernels["running"]; !ok {
		t.Fatal("the running kernel's runner was dropped")
	}
	// Once acknowledged, the unacked one goes too; nothing goes twice.
	if err := store.delete("unacked"); err != nil {
		t.Fatal(err)
	}
	if removed := a.collectKernelDirs(now); !slices.Equal(removed, []string{"unacked"}) {
		t.Fatalf("second pass removed %v, want unacked", removed)
	}
	// A shorter wait than the retention removes nothing more.
	if removed := a.collectKernelDirs(now.Add(30 * time.Minute)); len(removed) != 0 {
		t.Fatalf("third pass removed %v", removed)
	}
}

func TestMountedBelow(t *testing.T) {
	mounts := []string{"/", "/proc", "/data/kernels/k1/container/rootfs", "/data/kernels/k10"}
	for dir, want := range map[string]string{
		"/data/kernels/k1":  "/data/kernels/k1/container/rootfs",
		"/data/kernels/k10": "/data/kernels/k10",
		"/data/kernels/k2":  "",
		"/data/kernels/k":   "",
	} {
		if got := mountedBelow(mounts, dir); got != want {
			t.Errorf("mountedBelow(%s) = %q, want %q", dir, got, want)
		}
	}
	// This process's own mounts are read: / at least.
	if ms := mountPoints(); len(ms) > 0 && mountedBelow(ms, "/") == "" {
		t.Errorf("mount points %v lack /", ms)
	}
}
