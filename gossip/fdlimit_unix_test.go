//go:build unix

package gossip

import (
	"syscall"
	"testing"
)

// ensureFDLimit raises the soft RLIMIT_NOFILE towards need (the Go runtime
// already raises it to the hard limit at startup on most systems) and skips
// the test when the hard limit is too low.
func ensureFDLimit(tb testing.TB, need uint64) {
	tb.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		tb.Logf("getrlimit(RLIMIT_NOFILE): %v; carrying on", err)
		return
	}
	if uint64(lim.Cur) >= need {
		return
	}
	want := lim
	want.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err == nil {
		lim = want
	}
	if uint64(lim.Cur) < need {
		tb.Skipf("RLIMIT_NOFILE is %d, need about %d file descriptors", lim.Cur, need)
	}
}
