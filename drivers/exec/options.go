package exec

import (
	"fmt"
	"path/filepath"

	"github.com/corral-dev/corral/plugins/drivers"
)

// DefaultUser is the user that exec kernels run as unless the agent says
// otherwise (WithUser) or a UserMapper picks another.
const DefaultUser = "nobody"

// DefaultPidsLimit is the most processes (and threads) a task may have at
// once when its resources name no "pids" value.
const DefaultPidsLimit = 4096

// hostDriverName is the name of the driver in host mode (NewHost).
const hostDriverName = "host"

// pidsSlot is the resource slot that, when a task's resources carry it,
// sets its pids limit instead of the driver's default.
const pidsSlot = "pids"

// UserMapper picks the host user that a task runs as, by name or uid, from
// its config. It is the extension point for per-user uids: a mapper that
// gives every session owner a uid of their own (once TaskConfig carries the
// owner) isolates the kernels of different users from each other too. An
// empty name means the driver's default user (WithUser). The driver refuses
// any user whose uid is 0.
type UserMapper func(cfg *drivers.TaskConfig) (string, error)

// Option configures a Driver made by New or NewHost.
type Option func(*Driver)

// WithUser makes name (a user name or uid, resolved with os/user when a task
// starts) the user that kernels run as; the default is DefaultUser. The
// kernel's gid is the user's primary group; supplementary groups are
// cleared. It has no effect in host mode.
func WithUser(name string) Option {
	return func(d *Driver) { d.user = name }
}

// WithUserMapper makes m pick the user of each task (see UserMapper).
func WithUserMapper(m UserMapper) Option {
	return func(d *Driver) { d.mapUser = m }
}

// WithPidsLimit sets the pids limit of tasks whose resources name none;
// 0 or less leaves them unlimited. The default is DefaultPidsLimit.
func WithPidsLimit(n int64) Option {
	return func(d *Driver) { d.pidsLimit = n }
}

// WithMaxLogSize caps each of a kernel's output logs at n bytes on disk,
// the log and its rotated generation (.1) together (see logcap.Log); the
// task's shim copies the output into the logs, so the cap holds across
// agent restarts. 0 or less: no cap, the kernel appends to the files
// directly. The default is logcap.DefaultMaxLogSize.
func WithMaxLogSize(n int64) Option {
	return func(d *Driver) { d.maxLogSize = max(n, 0) }
}

// WithHiddenPaths names host directories (the agent's and the server's
// data dirs) that kernels must not see: each is covered, in the kernel's
// mount namespace, by an empty tmpfs that the kernel can pass (on the way
// to its working directory) but not list. The directory holding every
// kernel's task directory is always hidden. Relative paths are made
// absolute; "/" is ignored.
func WithHiddenPaths(paths ...string) Option {
	return func(d *Driver) {
		for _, p := range paths {
			if abs, err := filepath.Abs(p); err == nil && abs != "/" {
				d.hidden = append(d.hidden, abs)
			}
		}
	}
}

// CheckUser says whether name (a user name or uid) can run exec kernels:
// it must exist and must not be root.
func CheckUser(name string) error {
	_, err := lookupTaskUser(name)
	return err
}

// resolveUser returns the user a task of cfg runs as in isolated mode:
// cfg.User, else the mapper's choice, else the driver's user.
func (d *Driver) resolveUser(cfg *drivers.TaskConfig) (name string, err error) {
	name = cfg.User
	if name == "" && d.mapUser != nil {
		if name, err = d.mapUser(cfg); err != nil {
			return "", fmt.Errorf("%w: task %s: picking its user: %v", drivers.ErrInvalidConfig, cfg.ID, err)
		}
	}
	if name == "" {
		name = d.user
	}
	return name, nil
}

// TaskUserIDs returns the uid and primary gid that an isolated task of
// user name (a name or a uid, never root) runs as: the owner that files
// it writes get (e.g. in a volume the agent makes for it).
func TaskUserIDs(name string) (uid, gid int, err error) {
	iso, err := lookupTaskUser(name)
	if err != nil {
		return 0, 0, err
	}
	return int(iso.Uid), int(iso.Gid), nil
}
