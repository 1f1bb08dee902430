package vm

import (
	"fmt"
	"strconv"
	"strings"
	"syscall"

	"github.com/corral-dev/corral/plugins/drivers"
)

// signals maps the names Stop accepts (without "SIG") to signals.
var signals = map[string]syscall.Signal{
	"HUP": syscall.SIGHUP, "INT": syscall.SIGINT, "QUIT": syscall.SIGQUIT,
	"KILL": syscall.SIGKILL, "USR1": syscall.SIGUSR1, "USR2": syscall.SIGUSR2,
	"TERM": syscall.SIGTERM, "CONT": syscall.SIGCONT, "STOP": syscall.SIGSTOP,
	"ALRM": syscall.SIGALRM, "WINCH": syscall.SIGWINCH,
}

// parseSignal turns "SIGTERM", "term", "15" or "" (SIGTERM) into a signal.
func parseSignal(s string) (syscall.Signal, error) {
	s = strings.ToUpper(strings.TrimSpace(s))
	if s == "" {
		return syscall.SIGTERM, nil
	}
	if n, err := strconv.Atoi(s); err == nil {
		if n <= 0 || n > 64 {
			return 0, fmt.Errorf("%w: signal %d out of range 1-64", drivers.ErrInvalidConfig, n)
		}
		return syscall.Signal(n), nil
	}
	if sig, ok := signals[strings.TrimPrefix(s, "SIG")]; ok {
		return sig, nil
	}
	return 0, fmt.Errorf("%w: unknown signal %q: use a name such as SIGTERM or SIGINT, or a number", drivers.ErrInvalidConfig, s)
}
