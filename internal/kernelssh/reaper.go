package kernelssh

import (
	"errors"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Reaper waits for every child of the process, as PID 1 in a container
// must: the commands it started (Start) and orphans that the kernel
// re-parented to it, whose statuses it discards. Once a Reaper runs,
// every child must be started through its Start: a Cmd.Wait elsewhere
// would lose the race for its child's status.
type Reaper struct {
	mu      sync.Mutex
	waiting map[int]chan syscall.WaitStatus
}

// NewReaper makes the process a child subreaper (orphans of its children
// come to it even when it is not PID 1) and starts reaping.
func NewReaper() *Reaper {
	_ = unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
	r := &Reaper{waiting: map[int]chan syscall.WaitStatus{}}
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, syscall.SIGCHLD)
	go func() {
		r.reap()
		for range sigs {
			r.reap()
		}
	}()
	return r
}

// reap collects every exited child.
func (r *Reaper) reap() {
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil || pid <= 0 {
			return
		}
		if !ws.Exited() && !ws.Signaled() {
			continue
		}
		// Start registers a child under mu before the lock is free again,
		// so a child that ended at once is found here.
		r.mu.Lock()
		ch := r.waiting[pid]
		delete(r.waiting, pid)
		r.mu.Unlock()
		if ch != nil {
			ch <- ws
		}
	}
}

// Start starts cmd, whose Stdin, Stdout and Stderr must be nil or
// *os.File (no copying goroutines: Cmd.Wait is never called), and returns
// a function that waits for its end.
func (r *Reaper) Start(cmd *exec.Cmd) (func() syscall.WaitStatus, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	ch := make(chan syscall.WaitStatus, 1)
	r.waiting[cmd.Process.Pid] = ch
	return func() syscall.WaitStatus {
		ws := <-ch
		ch <- ws // a second call gets the same status
		_ = cmd.Process.Release()
		return ws
	}, nil
}
