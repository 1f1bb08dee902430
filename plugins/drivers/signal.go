package drivers

import (
	"fmt"
	"strconv"
	"strings"
	"syscall"
)

// signals maps the names ParseSignal accepts (without "SIG") to signals.
var signals = map[string]syscall.Signal{
	"HUP": syscall.SIGHUP, "INT": syscall.SIGINT, "QUIT": syscall.SIGQUIT,
	"KILL": syscall.SIGKILL, "USR1": syscall.SIGUSR1, "USR2": syscall.SIGUSR2,
	"TERM": syscall.SIGTERM, "CONT": syscall.SIGCONT, "STOP": syscall.SIGSTOP,
	"ALRM": syscall.SIGALRM, "WINCH": syscall.SIGWINCH, "PWR": syscall.SIGPWR,
}

// ParseSignal turns the signal a driver's Stop or Signal is given
// ("SIGTERM", "term", "15", or "" for SIGTERM) into a signal; anything
// else is ErrInvalidConfig saying what was wrong.
func ParseSignal(s string) (syscall.Signal, error) {
	s = strings.ToUpper(strings.TrimSpace(s))
	if s == "" {
		return syscall.SIGTERM, nil
	}
	if n, err := strconv.Atoi(s); err == nil {
		if n <= 0 || n > 64 {
			return 0, fmt.Errorf("%w: signal %d out of range 1-64", ErrInvalidConfig, n)
		}
		return syscall.Signal(n), nil
	}
	if sig, ok := signals[strings.TrimPrefix(s, "SIG")]; ok {
		return sig, nil
	}
	return 0, fmt.Errorf("%w: unknown signal %q: use a name such as SIGTERM or SIGINT, or a number", ErrInvalidConfig, s)
}
