package exec

import (
	"errors"
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
)

// The task's init and the exec-mode init that Exec starts live in package
// taskrun (see taskrun/init.go); what runs in the agent to enter a task is
// here.

// nsFiles are the /proc/<pid>/ns files Exec enters, in order, with their
// clone flags. The mount namespace comes last but one: after it, paths
// resolve inside the task.
var nsFiles = []struct {
	name string
	flag int
}{
	{"ipc", unix.CLONE_NEWIPC},
	{"mnt", unix.CLONE_NEWNS},
	{"pid", unix.CLONE_NEWPID},
}

// enterTask runs fn on a locked OS thread that has entered the pid, mount
// and IPC namespaces of process pid, which must still have startTime.
// The thread ends with fn: its namespaces are not the process's.
func enterTask(pid int, startTime uint64, fn func() error) error {
	var fds []int
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	for _, ns := range nsFiles {
		fd, err := unix.Open(fmt.Sprintf("/proc/%d/ns/%s", pid, ns.name), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("opening the task's %s namespace: %w", ns.name, err)
		}
		fds = append(fds, fd)
	}
	// The files opened above belong to pid; check that it is still the
	// task's process and not a later one with its number.
	if !alive(pid, startTime) {
		return errors.New("the task's init process is gone")
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: the runtime ends the thread with this goroutine.
		if err := unix.Unshare(unix.CLONE_FS); err != nil {
			errc <- fmt.Errorf("unsharing the thread's file system info: %w", err)
			return
		}
		for i, ns := range nsFiles {
			if err := unix.Setns(fds[i], ns.flag); err != nil {
				errc <- fmt.Errorf("entering the task's %s namespace: %w", ns.name, err)
				return
			}
		}
		errc <- fn()
	}()
	return <-errc
}
