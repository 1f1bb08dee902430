package exec

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	osexec "os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/corral-dev/corral/drivers/exec/cgroup"
	"github.com/corral-dev/corral/plugins/drivers"
)

// basePath is the PATH of every task that does not set its own.
const basePath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// joinScript runs as `/bin/sh -c joinScript corral-join N procs... cmd args...`
// on cgroup v1: it writes its own pid to the N cgroup.procs files, tells the
// driver through fd 3 that it is inside the cgroups, and only then execs the
// command, so the command never runs outside its limits.
const joinScript = `n=$1; shift
while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 125; shift; n=$((n-1)); done
printf x >&3 || exit 125
exec 3>&-
exec "$@"`

// joinTimeout bounds how long Start waits for the wrapper to join the
// cgroups when ctx has no deadline.
const joinTimeout = 30 * time.Second

// taskEnv returns the base environment of a task: PATH, HOME=WorkDir and
// the task's own variables, which win.
func taskEnv(cfg *drivers.TaskConfig) map[string]string {
	env := map[string]string{"PATH": basePath, "HOME": cfg.WorkDir}
	maps.Copy(env, cfg.Env)
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

// openLog opens path for appending, creating it and its directory; an empty
// path discards the output.
func openLog(path string) (*os.File, error) {
	if path == "" {
		return os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	return os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
}

// startCmd starts cmd inside the cgroups of g (none when g is nil) and
// returns only once the process is inside them. On cgroup v2 the kernel
// places the child in the cgroup at clone time (CLONE_INTO_CGROUP); on v1
// cmd is wrapped in joinScript. cmd.SysProcAttr must be set.
func startCmd(ctx context.Context, cmd *osexec.Cmd, g *cgroup.Group) error {
	switch {
	case g == nil:
		return cmd.Start()
	case g.Version == cgroup.V2:
		f, err := os.Open(g.UnifiedDir())
		if err != nil {
			return fmt.Errorf("opening cgroup: %w", err)
		}
		defer f.Close()
		cmd.SysProcAttr.UseCgroupFD = true
		cmd.SysProcAttr.CgroupFD = int(f.Fd())
		return cmd.Start()
	}
	if len(cmd.ExtraFiles) != 0 {
		return errors.New("startCmd: cmd must not have ExtraFiles")
	}
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	procs := g.ProcsFiles()
	args := []string{"/bin/sh", "-c", joinScript, "corral-join", strconv.Itoa(len(procs))}
	args = append(args, procs...)
	args = append(args, cmd.Path)
	args = append(args, cmd.Args[1:]...)
	cmd.Path, cmd.Args = "/bin/sh", args
	cmd.ExtraFiles = []*os.File{w} // fd 3 in the child
	err = cmd.Start()
	w.Close()
	if err != nil {
		return err
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(joinTimeout)
	}
	_ = r.SetReadDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = r.SetReadDeadline(time.Now()) })
	defer stop()
	buf := make([]byte, 1)
	if _, err = io.ReadFull(r, buf); err == nil {
		return nil
	}
	// The wrapper died or hung before joining: make sure it is gone.
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	_ = cmd.Process.Kill()
	werr := cmd.Wait()
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("joining cgroups: %w", cerr)
	}
	return fmt.Errorf("joining cgroups %v failed (%v); the reason is in the task's stderr", procs, werr)
}
