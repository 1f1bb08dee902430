package exec

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// clockTicks is USER_HZ, the unit of the times in /proc/<pid>/stat. It is
// 100 on every Linux architecture Go supports.
const clockTicks = 100

// procStat is the part of /proc/<pid>/stat the driver uses.
type procStat struct {
	State     byte   // R, S, D, Z, ...
	Pgid      int    // process group
	CPUTicks  uint64 // utime + stime
	StartTime uint64 // clock ticks after boot; with pid, identifies a process
}

// errNoProcess means /proc has no entry for the pid.
var errNoProcess = errors.New("no such process")

// readProcStat parses /proc/<pid>/stat (see proc(5)).
func readProcStat(pid int) (procStat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return procStat{}, errNoProcess
		}
		return procStat{}, err
	}
	return parseProcStat(string(b))
}

func parseProcStat(s string) (procStat, error) {
	// The command name is in parentheses and may itself contain spaces or
	// parentheses, so split after the last ')'.
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("malformed /proc stat %q", s)
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); field n is f[n-3].
	if len(f) < 20 {
		return procStat{}, fmt.Errorf("malformed /proc stat %q", s)
	}
	var ps procStat
	ps.State = f[0][0]
	pgid, err1 := strconv.Atoi(f[2])
	utime, err2 := strconv.ParseUint(f[11], 10, 64)
	stime, err3 := strconv.ParseUint(f[12], 10, 64)
	start, err4 := strconv.ParseUint(f[19], 10, 64)
	if err := errors.Join(err1, err2, err3, err4); err != nil {
		return procStat{}, fmt.Errorf("malformed /proc stat: %w", err)
	}
	ps.Pgid, ps.CPUTicks, ps.StartTime = pgid, utime+stime, start
	return ps, nil
}

// alive reports whether pid is a live (not zombie) process that started at
// startTime; startTime 0 skips that check.
func alive(pid int, startTime uint64) bool {
	ps, err := readProcStat(pid)
	if err != nil {
		return false
	}
	if ps.State == 'Z' || ps.State == 'X' {
		return false
	}
	return startTime == 0 || ps.StartTime == startTime
}

// readRSS returns VmRSS of /proc/<pid>/status in bytes.
func readRSS(pid int) (uint64, error) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:")
		if !ok {
			continue
		}
		fs := strings.Fields(rest) // "1234 kB"
		if len(fs) == 0 {
			break
		}
		kb, err := strconv.ParseUint(fs[0], 10, 64)
		if err != nil {
			return 0, err
		}
		return kb * 1024, nil
	}
	return 0, sc.Err() // kernel threads and zombies have no VmRSS
}

// groupMembers returns the live (not zombie) processes in process group pgid.
func groupMembers(pgid int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		ps, err := readProcStat(pid)
		if err != nil || ps.Pgid != pgid || ps.State == 'Z' || ps.State == 'X' {
			continue
		}
		pids = append(pids, pid)
	}
	return pids
}

// procGroupStats sums CPU time and RSS over the live processes of group pgid.
func procGroupStats(pgid int) (cpuNanos, rss, n uint64) {
	for _, pid := range groupMembers(pgid) {
		ps, err := readProcStat(pid)
		if err != nil {
			continue
		}
		cpuNanos += ps.CPUTicks * (1e9 / clockTicks)
		if r, err := readRSS(pid); err == nil {
			rss += r
		}
		n++
	}
	return cpuNanos, rss, n
}
