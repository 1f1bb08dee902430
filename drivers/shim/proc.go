package shim

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// procStat returns the state (field 3) and the start time (field 22, in
// clock ticks after boot) of pid from /proc/<pid>/stat.
func procStat(pid int) (state byte, start uint64, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, err
	}
	// The command name is in parentheses and may hold spaces or
	// parentheses itself: the fields start after the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 || f[0] == "" {
		return 0, 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	start, err = strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("malformed /proc/%d/stat: %w", pid, err)
	}
	return f[0][0], start, nil
}

// startTime returns the start time of pid, which with the pid identifies
// a process even after the pid number is reused.
func startTime(pid int) (uint64, error) {
	_, start, err := procStat(pid)
	return start, err
}

// processAlive reports whether pid is a live (not zombie) process that
// started at start.
func processAlive(pid int, start uint64) bool {
	if pid <= 0 {
		return false
	}
	state, st, err := procStat(pid)
	return err == nil && st == start && state != 'Z' && state != 'X'
}
