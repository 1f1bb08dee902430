// Package rlimit turns a kernel's ulimits into setrlimit values for the
// drivers, checking that the agent may grant them.
package rlimit

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/corral-dev/corral/plugins/drivers"
	"github.com/corral-dev/corral/structs"
)

// resources maps the ulimit names of structs.UlimitNames to setrlimit's
// resources.
var resources = map[string]int{
	"core": unix.RLIMIT_CORE, "cpu": unix.RLIMIT_CPU, "data": unix.RLIMIT_DATA, "fsize": unix.RLIMIT_FSIZE,
	"locks": unix.RLIMIT_LOCKS, "memlock": unix.RLIMIT_MEMLOCK, "msgqueue": unix.RLIMIT_MSGQUEUE,
	"nice": unix.RLIMIT_NICE, "nofile": unix.RLIMIT_NOFILE, "nproc": unix.RLIMIT_NPROC, "rss": unix.RLIMIT_RSS,
	"rtprio": unix.RLIMIT_RTPRIO, "rttime": unix.RLIMIT_RTTIME, "sigpending": unix.RLIMIT_SIGPENDING,
	"stack": unix.RLIMIT_STACK,
}

// Limit is one resolved ulimit.
type Limit struct {
	Resource   int
	Soft, Hard uint64
}

// Resolve checks u and returns it as setrlimit takes it (-1: unlimited).
// A hard limit above the agent's own needs CAP_SYS_RESOURCE: without it
// the error (drivers.ErrInvalidConfig) says what may be asked for.
func Resolve(u structs.Ulimit) (Limit, error) {
	if err := structs.ValidUlimit(u); err != nil {
		return Limit{}, fmt.Errorf("%w: %v", drivers.ErrInvalidConfig, err)
	}
	res, ok := resources[u.Name]
	if !ok {
		return Limit{}, fmt.Errorf("%w: ulimit %q is not supported", drivers.ErrInvalidConfig, u.Name)
	}
	l := Limit{Resource: res, Soft: value(u.Soft), Hard: value(u.Hard)}
	var cur unix.Rlimit
	if err := unix.Getrlimit(res, &cur); err != nil || l.Hard <= cur.Max || HasCapability(unix.CAP_SYS_RESOURCE) {
		return l, nil
	}
	limit := "unlimited"
	if l.Hard != unix.RLIM_INFINITY {
		limit = strconv.FormatUint(l.Hard, 10)
	}
	return Limit{}, fmt.Errorf("%w: ulimit %s: a hard limit of %s is above the agent's own (%d) and the agent lacks CAP_SYS_RESOURCE to raise it: "+
		"ask for at most %d, or run the agent with a higher limit or that capability", drivers.ErrInvalidConfig, u.Name, limit, cur.Max, cur.Max)
}

func value(v int64) uint64 {
	if v < 0 {
		return unix.RLIM_INFINITY
	}
	return uint64(v)
}

// HasCapability reports whether capability c is in this process's
// effective set.
func HasCapability(c int) bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && mask&(1<<uint(c)) != 0
		}
	}
	return false
}
