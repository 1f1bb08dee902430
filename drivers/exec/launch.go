package exec

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/corral-dev/corral/drivers/exec/taskrun"
	"github.com/corral-dev/corral/plugins/drivers"
)

// basePath is the PATH of every task that does not set its own.
const basePath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// taskEnv returns the base environment of a task: PATH, HOME=WorkDir,
// the task's own variables, which win over those, and its devices'
// (NVIDIA_VISIBLE_DEVICES...), which win over all.
func taskEnv(cfg *drivers.TaskConfig) map[string]string {
	env := map[string]string{"PATH": basePath, "HOME": cfg.WorkDir}
	maps.Copy(env, cfg.Env)
	if cfg.Devices != nil {
		maps.Copy(env, cfg.Devices.Env)
	}
	return env
}

// envList turns env into sorted KEY=value pairs.
func envList(env map[string]string) []string {
	out := make([]string, 0, len(env))
	for _, k := range slices.Sorted(maps.Keys(env)) {
		out = append(out, k+"="+env[k])
	}
	return out
}

// lookPath resolves name like a shell would with the given PATH: names with
// a slash are taken as they are (relative to dir), others are searched in
// the absolute directories of pathEnv.
func lookPath(name, pathEnv, dir string) (string, error) {
	if strings.Contains(name, "/") {
		p := name
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		if err := executable(p); err != nil {
			return "", err
		}
		return p, nil
	}
	for _, d := range filepath.SplitList(pathEnv) {
		if !filepath.IsAbs(d) {
			continue // a relative entry would depend on the working directory
		}
		p := filepath.Join(d, name)
		if executable(p) == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%q not found in PATH %q: give an absolute path or install it on the node", name, pathEnv)
}

func executable(p string) error {
	fi, err := os.Stat(p)
	if err != nil {
		return err
	}
	if fi.IsDir() || fi.Mode()&0o111 == 0 {
		return fmt.Errorf("%s is not an executable file", p)
	}
	return nil
}

// lookupUser returns the credentials of name, or nil when name is empty.
func lookupUser(name string) (*syscall.Credential, error) {
	if name == "" {
		return nil, nil
	}
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("%w: user %q: %v", drivers.ErrInvalidConfig, name, err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err := errors.Join(err1, err2); err != nil {
		return nil, fmt.Errorf("%w: user %q has a non-numeric id: %v", drivers.ErrInvalidConfig, name, err)
	}
	if euid := os.Geteuid(); euid != 0 && uint64(euid) != uid {
		return nil, fmt.Errorf("%w: running tasks as user %q needs an agent running as root", drivers.ErrInvalidConfig, name)
	}
	cred := &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	if gids, err := u.GroupIds(); err == nil {
		for _, g := range gids {
			if n, err := strconv.ParseUint(g, 10, 32); err == nil {
				cred.Groups = append(cred.Groups, uint32(n))
			}
		}
	}
	return cred, nil
}

// lookupTaskUser returns the uid and primary gid that an isolated task of
// user name (a name or a uid) runs as; uid 0 is refused.
func lookupTaskUser(name string) (*Isolation, error) {
	u, err := user.Lookup(name)
	if err != nil {
		var uerr error
		if u, uerr = user.LookupId(name); uerr != nil {
			return nil, fmt.Errorf("%w: user %q: %v; give an existing user (corral agent -exec-user)", drivers.ErrInvalidConfig, name, err)
		}
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err := errors.Join(err1, err2); err != nil {
		return nil, fmt.Errorf("%w: user %q has a non-numeric id: %v", drivers.ErrInvalidConfig, name, err)
	}
	if uid == 0 {
		return nil, fmt.Errorf("%w: user %q is root: the exec driver never runs kernels as root (admins have the host driver)", drivers.ErrInvalidConfig, name)
	}
	return &Isolation{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// Isolation is how an isolated task sees the host (its user and the
// directories hidden from it), as its shim and its init get it.
type Isolation = taskrun.Isolation
