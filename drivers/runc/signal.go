package runc

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// terminatesByDefault reports whether sig's default action ends the
// process (terminate or core dump), see signal(7).
func terminatesByDefault(sig unix.Signal) bool {
	switch sig {
	case unix.SIGCHLD, unix.SIGCONT, unix.SIGURG, unix.SIGWINCH, // ignored
		unix.SIGSTOP, unix.SIGTSTP, unix.SIGTTIN, unix.SIGTTOU: // stop
		return false
	}
	return sig >= 1 && sig <= 64
}

// hasDefaultAction reports whether process pid neither catches nor ignores
// sig, reading its signal masks from /proc. For the init of a pid namespace
// the kernel then discards sig (except SIGKILL and SIGSTOP from an ancestor
// namespace), see pid_namespaces(7).
func hasDefaultAction(pid int, sig unix.Signal) (bool, error) {
	if sig == unix.SIGKILL || sig == unix.SIGSTOP {
		return true, nil // cannot be caught or ignored
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return false, err
	}
	var caught, ignored uint64
	for line := range strings.Lines(string(b)) {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		switch k {
		case "SigCgt":
			caught, err = strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		case "SigIgn":
			ignored, err = strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		}
		if err != nil {
			return false, fmt.Errorf("parsing %s of process %d: %w", k, pid, err)
		}
	}
	bit := uint64(1) << (uint(sig) - 1)
	return caught&bit == 0 && ignored&bit == 0, nil
}
