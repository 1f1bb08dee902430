package runc

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/corral-dev/corral/plugins/drivers"
)

// DefaultDiskLimit is how many bytes a kernel may write into its scratch
// space (the writable layer of its rootfs) unless its disk slot or
// WithDiskLimit says otherwise.
const DefaultDiskLimit = 10 << 30

// ErrDiskLimit is wrapped by the ExitResult.Err of a kernel that the
// driver stopped because it wrote more than its disk limit into its
// scratch space.
var ErrDiskLimit = errors.New("disk limit exceeded")

// diskCheckInterval is how often a driver made after it is set measures
// each kernel's scratch space. A kernel may overshoot its limit by what it
// writes in one interval.
var diskCheckInterval = 2 * time.Second

// diskExceededFile, in the container's dir, records the limit a kernel
// went past, so that an agent that recovers the task still reports why it
// was stopped.
const diskExceededFile = "disk-exceeded"

// diskLimitError is why a kernel was stopped for its disk use.
type diskLimitError struct{ limit int64 }

func (e *diskLimitError) Error() string {
	return fmt.Sprintf("kernel wrote more than %s to its scratch space (disk slot): it was stopped; ask for a larger disk slot or write big data to a volume",
		formatBytes(e.limit))
}

// Is makes errors.Is(err, ErrDiskLimit) and errors.Is(err,
// drivers.ErrStoppedByDriver) hold.
func (e *diskLimitError) Is(target error) bool {
	return target == ErrDiskLimit || target == drivers.ErrStoppedByDriver
}

// formatBytes writes n in the largest binary unit that divides it, or in
// GiB/MiB with one decimal.
func formatBytes(n int64) string {
	units := []string{"GiB", "MiB", "KiB"}
	for i, u := range units {
		shift := uint(30 - 10*i)
		if n >= 1<<shift {
			if n%(1<<shift) == 0 {
				return strconv.FormatInt(n>>shift, 10) + " " + u
			}
			return strconv.FormatFloat(float64(n)/float64(int64(1)<<shift), 'f', 1, 64) + " " + u
		}
	}
	return strconv.FormatInt(n, 10) + " bytes"
}

// diskUsage returns the bytes that the files below dir take on disk
// (allocated blocks, each inode counted once), as du does. Files that
// vanish while it walks are skipped.
func diskUsage(dir string) (int64, error) {
	type inode struct{ dev, ino uint64 }
	seen := map[inode]bool{}
	var total int64
	err := filepath.WalkDir(dir, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return nil
		}
		if st.Nlink > 1 && st.Mode&unix.S_IFMT != unix.S_IFDIR {
			k := inode{uint64(st.Dev), st.Ino}
			if seen[k] {
				return nil
			}
			seen[k] = true
		}
		total += st.Blocks * 512
		return nil
	})
	return total, err
}

// scratchDir is where the kernel's writes land: the overlay's upper dir
// or the copy.
func (r *rootfsState) scratchDir() string {
	switch {
	case r.Upper != "":
		return r.Upper
	case r.Overlay:
		return filepath.Join(r.Dir, "upper")
	default:
		return r.RootFS
	}
}

// watchDisk measures the task's scratch space every interval until the
// task exits, and kills the task, recording why, when the space holds
// more than limit bytes.
func (t *task) watchDisk(limit int64, interval time.Duration) {
	if limit <= 0 {
		return
	}
	dir := t.state.RootFS.scratchDir()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-t.Done():
			return
		case <-tick.C:
		}
		used, err := diskUsage(dir)
		if err != nil {
			t.Logger.Warn("cannot measure the kernel's scratch space", "dir", dir, "error", err)
			continue
		}
		if used <= limit {
			continue
		}
		t.Logger.Warn("kernel wrote past its disk limit: stopping it", "used_bytes", used, "limit_bytes", limit)
		t.recordDiskExceeded(limit)
		t.Kill()
		return
	}
}

// recordDiskExceeded records, in memory and in the container's dir, that
// the task went past limit.
func (t *task) recordDiskExceeded(limit int64) {
	t.diskExceeded.Store(limit)
	if t.state.RootFS.Dir == "" {
		return
	}
	p := filepath.Join(t.state.RootFS.Dir, diskExceededFile)
	if err := os.WriteFile(p, []byte(strconv.FormatInt(limit, 10)+"\n"), 0o600); err != nil {
		t.Logger.Warn("cannot record the disk limit: after an agent restart the task will not say why it was stopped", "error", err)
	}
}

// diskLimitExceeded returns the limit that the task went past, 0 if none.
func (t *task) diskLimitExceeded() int64 {
	if n := t.diskExceeded.Load(); n > 0 {
		return n
	}
	if t.state.RootFS.Dir == "" {
		return 0
	}
	b, err := os.ReadFile(filepath.Join(t.state.RootFS.Dir, diskExceededFile))
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	return max(n, 0)
}
