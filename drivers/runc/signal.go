package runc

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/corral-dev/corral/plugins/drivers"
)

// signals maps the names Stop accepts (without "SIG") to signals.
var signals = map[string]unix.Signal{
	"HUP": unix.SIGHUP, "INT": unix.SIGINT, "QUIT": unix.SIGQUIT,
	"KILL": unix.SIGKILL, "USR1": unix.SIGUSR1, "USR2": unix.SIGUSR2,
	"TERM": unix.SIGTERM, "CONT": unix.SIGCONT, "STOP": unix.SIGSTOP,
	"ALRM": unix.SIGALRM, "WINCH": unix.SIGWINCH, "PWR": unix.SIGPWR,
}

// parseSignal turns "SIGTERM", "term", "15" or "" (SIGTERM) into a signal.
func parseSignal(s string) (unix.Signal, error) {
	s = strings.ToUpper(strings.TrimSpace(s))
	if s == "" {
		return unix.SIGTERM, nil
	}
	if n, err := strconv.Atoi(s); err == nil {
		if n <= 0 || n > 64 {
			return 0, fmt.Errorf("%w: signal %d out of range 1-64", drivers.ErrInvalidConfig, n)
		}
		return unix.Signal(n), nil
	}
	if sig, ok := signals[strings.TrimPrefix(s, "SIG")]; ok {
		return sig, nil
	}
	return 0, fmt.Errorf("%w: unknown signal %q: use a name such as SIGTERM or SIGINT, or a number", drivers.ErrInvalidConfig, s)
}

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
