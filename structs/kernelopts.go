package structs

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// KnownCapabilities are the Linux capabilities a kernel may be given (by
// their CAP_ names), as of Linux 6.x.
var KnownCapabilities = []string{
	"CAP_AUDIT_CONTROL", "CAP_AUDIT_READ", "CAP_AUDIT_WRITE", "CAP_BLOCK_SUSPEND", "CAP_BPF",
	"CAP_CHECKPOINT_RESTORE", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER",
	"CAP_FSETID", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_KILL", "CAP_LEASE", "CAP_LINUX_IMMUTABLE",
	"CAP_MAC_ADMIN", "CAP_MAC_OVERRIDE", "CAP_MKNOD", "CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE",
	"CAP_NET_BROADCAST", "CAP_NET_RAW", "CAP_PERFMON", "CAP_SETFCAP", "CAP_SETGID", "CAP_SETPCAP",
	"CAP_SETUID", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_CHROOT", "CAP_SYS_MODULE", "CAP_SYS_NICE",
	"CAP_SYS_PACCT", "CAP_SYS_PTRACE", "CAP_SYS_RAWIO", "CAP_SYS_RESOURCE", "CAP_SYS_TIME",
	"CAP_SYS_TTY_CONFIG", "CAP_SYSLOG", "CAP_WAKE_ALARM",
}

// NormalizeCapability returns a capability's canonical name: upper case,
// with the CAP_ prefix ("ipc_lock" → "CAP_IPC_LOCK"), or an error naming
// the known ones when there is no such capability.
func NormalizeCapability(s string) (string, error) {
	c := strings.ToUpper(strings.TrimSpace(s))
	if !strings.HasPrefix(c, "CAP_") {
		c = "CAP_" + c
	}
	if !slices.Contains(KnownCapabilities, c) {
		return "", fmt.Errorf("unknown capability %q: known are %s", s, strings.Join(KnownCapabilities, ", "))
	}
	return c, nil
}

// ParseUlimit parses "name=soft[:hard]", each value a whole number or
// "unlimited" (-1); without a hard value it is the soft one. The result
// is checked with ValidUlimit.
func ParseUlimit(s string) (Ulimit, error) {
	name, vals, ok := strings.Cut(strings.TrimSpace(s), "=")
	if !ok || name == "" || vals == "" {
		return Ulimit{}, fmt.Errorf("ulimit %q: want name=soft[:hard], e.g. memlock=unlimited or nofile=65536:65536", s)
	}
	soft, hard, hasHard := strings.Cut(vals, ":")
	parse := func(v string) (int64, error) {
		v = strings.TrimSpace(v)
		if v == "unlimited" || v == "-1" {
			return -1, nil
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("ulimit %q: value %q is not a whole number or \"unlimited\"", s, v)
		}
		return n, nil
	}
	u := Ulimit{Name: strings.ToLower(strings.TrimSpace(name))}
	var err error
	if u.Soft, err = parse(soft); err != nil {
		return Ulimit{}, err
	}
	u.Hard = u.Soft
	if hasHard {
		if u.Hard, err = parse(hard); err != nil {
			return Ulimit{}, err
		}
	}
	if err := ValidUlimit(u); err != nil {
		return Ulimit{}, err
	}
	return u, nil
}

// FormatUlimit writes u as ParseUlimit reads it.
func FormatUlimit(u Ulimit) string {
	f := func(v int64) string {
		if v < 0 {
			return "unlimited"
		}
		return strconv.FormatInt(v, 10)
	}
	if u.Soft == u.Hard {
		return u.Name + "=" + f(u.Soft)
	}
	return u.Name + "=" + f(u.Soft) + ":" + f(u.Hard)
}
