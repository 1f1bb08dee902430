package cgroup

import (
	"bufio"
	"fmt"
	"io"
	"strings"
)

// Mount is one cgroup filesystem found in /proc/self/mountinfo.
type Mount struct {
	// Point is where the hierarchy is mounted, e.g. /sys/fs/cgroup/memory.
	Point string
	// Root is the cgroup of the hierarchy that is mounted at Point ("/"
	// unless the mount was made inside a cgroup namespace or bind-mounted).
	Root string
	// V2 is true for a cgroup2 (unified) mount.
	V2 bool
	// Controllers lists the v1 controllers bound to the mount ("cpu",
	// "memory", "cpuacct"); empty for cgroup2, whose controllers are read
	// from cgroup.controllers instead.
	Controllers []string
}

// v1Options are super options of a cgroup v1 mount that are not controllers.
var v1Options = map[string]bool{
	"rw": true, "ro": true, "noprefix": true, "clone_children": true,
	"xattr": true, "cpuset_v2_mode": true, "favordynmods": true,
}

// ParseMountinfo returns the cgroup and cgroup2 mounts listed in r, which
// has the format of /proc/self/mountinfo (see proc(5)).
func ParseMountinfo(r io.Reader) ([]Mount, error) {
	var mounts []Mount
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		// Fields before " - " are per-mount, after it per-superblock.
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		pf := strings.Fields(pre)
		sf := strings.Fields(post)
		if len(pf) < 5 || len(sf) < 1 {
			return nil, fmt.Errorf("malformed mountinfo line %q", line)
		}
		m := Mount{Root: unescape(pf[3]), Point: unescape(pf[4])}
		switch sf[0] {
		case "cgroup2":
			m.V2 = true
		case "cgroup":
			if len(sf) < 3 {
				continue
			}
			for _, opt := range strings.Split(sf[2], ",") {
				if v1Options[opt] || strings.Contains(opt, "=") {
					continue // name=systemd, release_agent=... are not controllers
				}
				m.Controllers = append(m.Controllers, opt)
			}
		default:
			continue
		}
		mounts = append(mounts, m)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading mountinfo: %w", err)
	}
	return mounts, nil
}

// unescape undoes the octal escapes (\040 for space) of mountinfo paths.
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) && isOctal(s[i+1:i+4]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '7' {
			return false
		}
	}
	return true
}
