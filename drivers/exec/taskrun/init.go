package taskrun

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	osexec "os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/corral-dev/corral/drivers/exec/cgroup"
)

// An isolated task runs as a child of its init, a re-exec of the shim's
// binary (corral-shim, or the agent's) with InitArg as first argument, which the task's shim starts in new pid,
// mount and IPC namespaces. As root and before the command exists, the init
// joins the task's cgroups, makes every mount private, gives the task a
// private /tmp, /var/tmp and /dev/shm, covers the hidden directories (the agent's
// data dir, every kernel's files) with empty tmpfs mounts while keeping the
// task's working directory reachable at its path, and mounts a /proc of the
// new pid namespace. Then it starts the command as the task's unprivileged
// user, with no_new_privs, stays the namespace's pid 1 (reaping orphans),
// and reports the command's exit status to the shim.
//
// Exec into an isolated task enters the same namespaces (setns on a locked
// thread of the caller) and starts its binary with InitArg and the "exec"
// mode: it joins the cgroups, drops to the task's user and execs the
// command.
//
// The two pipes: the caller writes the JSON InitConfig to fd 3 and closes
// it; the init writes one status line to fd 4 ("started", or "error: why"),
// and, in init mode, "exit CODE SIGNAL" once the command ended.

// InitArg is the first argument that turns a binary importing this package
// into the init helper: the package's initialiser then runs it and exits.
const InitArg = "__corral_exec_init"

// Modes of the init helper: ModeInit runs a task under its init, ModeExec
// execs a command inside a running task.
const (
	ModeInit = "init"
	ModeExec = "exec"
)

// initStatusStarted is the status line of a command that runs.
const initStatusStarted = "started"

// Mount options of the tmpfs mounts that hide and replace directories: a
// hidden directory can be passed on the way to the task's working
// directory, not listed.
const (
	hideMountData = "mode=0711,size=1m"
	tmpMountData  = "mode=1777"
)

// privateDirs are the world-writable directories that every task gets
// empty and of its own, so that tasks (which may share a uid) cannot leave
// files to each other or to the host there.
var privateDirs = []string{"/tmp", "/var/tmp", "/dev/shm"}

// namespaceFlags are the namespaces of an isolated task: pid, mount, IPC.
const namespaceFlags = syscall.CLONE_NEWPID | syscall.CLONE_NEWNS | syscall.CLONE_NEWIPC

// forwardedSignals are the signals the init passes on to the command when
// the command left the task's process group (a signal to the group
// reaches it directly otherwise).
var forwardedSignals = []os.Signal{
	syscall.SIGHUP, syscall.SIGINT, syscall.SIGQUIT, syscall.SIGTERM, syscall.SIGUSR1,
	syscall.SIGUSR2, syscall.SIGALRM, syscall.SIGWINCH, syscall.SIGCONT,
}

// Isolation is how an isolated task sees the host, as its shim and its
// init get it.
type Isolation struct {
	// Uid and Gid run the command; supplementary groups are cleared.
	Uid uint32 `json:"uid"`
	Gid uint32 `json:"gid"`
	// Hidden are host directories covered by empty tmpfs mounts.
	Hidden []string `json:"hidden,omitempty"`
}

// InitConfig is what the init helper reads on fd 3.
type InitConfig struct {
	Mode      string     `json:"mode"`
	Path      string     `json:"path"`
	Args      []string   `json:"args"`
	Dir       string     `json:"dir"`
	Env       []string   `json:"env"`
	Isolation *Isolation `json:"isolation"`
	// Procs are cgroup.procs files to join (cgroup v1; on v2 the caller
	// starts the init inside the cgroup).
	Procs []string `json:"procs,omitempty"`
	// Limits are the command's rlimits, affinity and /dev/shm size.
	Limits
	// Binds are bound in the task's mount namespace after the host's
	// directories are hidden, from sources opened before (init mode).
	Binds []Bind `json:"binds,omitempty"`
}

// initName is the init's process name (ps shows it in the task).
const initName = "corral-init"

func init() {
	if len(os.Args) > 1 && os.Args[1] == InitArg {
		// Package initialisation runs on the main thread, whose name
		// the process shows.
		_ = unix.Prctl(unix.PR_SET_NAME, uintptr(unsafe.Pointer(&[]byte(initName + "\x00")[0])), 0, 0, 0)
		os.Exit(initMain())
	}
}

// initMain is the init helper process; it never returns in exec mode when
// the command starts.
func initMain() int {
	syscall.CloseOnExec(3)
	syscall.CloseOnExec(4)
	cfgR, status := os.NewFile(3, "init-config"), os.NewFile(4, "init-status")
	fail := func(err error) int {
		fmt.Fprintf(status, "error: %s\n", strings.ReplaceAll(err.Error(), "\n", " "))
		return 125
	}
	var cfg InitConfig
	if err := json.NewDecoder(cfgR).Decode(&cfg); err != nil {
		return fail(fmt.Errorf("reading the init config: %w", err))
	}
	cfgR.Close()
	if cfg.Isolation == nil || len(cfg.Args) == 0 {
		return fail(errors.New("init config without isolation or command"))
	}
	for _, f := range cfg.Procs {
		// "0" is the writing process, whatever its pid namespace.
		if err := os.WriteFile(f, []byte("0"), 0o644); err != nil {
			return fail(fmt.Errorf("joining cgroup %s: %w", filepath.Dir(f), err))
		}
	}
	// As root, before the command: a limit above the init's own needs
	// CAP_SYS_RESOURCE, which the command never has.
	if err := SetRlimits(cfg.Rlimits); err != nil {
		return fail(err)
	}
	switch cfg.Mode {
	case ModeInit:
		return runInit(&cfg, status, fail)
	case ModeExec:
		return fail(execAsUser(&cfg))
	}
	return fail(fmt.Errorf("unknown init mode %q", cfg.Mode))
}

// runInit sets the task's mount namespace up, starts its command and waits
// for it as the pid namespace's init.
func runInit(cfg *InitConfig, status *os.File, fail func(error) int) int {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, forwardedSignals...)
	if err := setupMounts(cfg); err != nil {
		return fail(err)
	}
	pid, err := startAsUser(cfg)
	if err != nil {
		return fail(err)
	}
	// The init must outlive an out-of-memory task: the kernel's OOM killer
	// then picks the command, never the init (set after the fork, which
	// would have inherited it).
	_ = os.WriteFile("/proc/self/oom_score_adj", []byte("-1000"), 0o644)
	fmt.Fprintln(status, initStatusStarted)
	go func() {
		for s := range sigs {
			// A process group signal reaches the command itself unless it
			// left the group.
			if pg, err := syscall.Getpgid(pid); err == nil && pg != syscall.Getpgrp() {
				_ = syscall.Kill(pid, s.(syscall.Signal))
			}
		}
	}()
	for {
		var ws syscall.WaitStatus
		wpid, err := syscall.Wait4(-1, &ws, 0, nil)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil {
			fmt.Fprintf(status, "error: waiting for the command: %v\n", err)
			return 125
		}
		if wpid != pid || !(ws.Exited() || ws.Signaled()) {
			continue // an orphan the init reaps
		}
		code, sig := ws.ExitStatus(), 0
		if ws.Signaled() {
			sig = int(ws.Signal())
			code = 128 + sig
		}
		fmt.Fprintf(status, "exit %d %d\n", code, sig)
		// Leaving ends the pid namespace: the kernel kills what is left.
		return code
	}
}

// setupMounts makes the calling process's mount namespace the task's:
// private propagation, private privateDirs, hidden directories,
// dir reachable at its path and a /proc of the current pid namespace.
func setupMounts(cfg *InitConfig) error {
	dir, hidden := cfg.Dir, cfg.Isolation.Hidden
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("making mounts private: %w", err)
	}
	// Binds' sources are opened first (they may lie in directories hidden
	// below) and bound last (their destinations may lie in the private or
	// hidden directories, e.g. a cluster kernel's helper in the data dir).
	srcs := make([]int, len(cfg.Binds))
	for i, b := range cfg.Binds {
		fd, err := unix.Open(b.Source, unix.O_PATH|unix.O_CLOEXEC, 0)
		if err != nil {
			for _, f := range srcs[:i] {
				unix.Close(f)
			}
			return fmt.Errorf("bind mount source %s: %w", b.Source, err)
		}
		srcs[i] = fd
	}
	defer func() {
		for _, f := range srcs {
			unix.Close(f)
		}
	}()
	wd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening working directory: %w", err)
	}
	defer unix.Close(wd)
	var want unix.Stat_t
	if err := unix.Fstat(wd, &want); err != nil {
		return fmt.Errorf("working directory: %w", err)
	}
	for _, p := range privateDirs {
		if fi, err := os.Stat(p); err != nil || !fi.IsDir() {
			continue
		}
		data := tmpMountData
		if p == "/dev/shm" && cfg.ShmBytes > 0 {
			data += ",size=" + strconv.FormatInt(cfg.ShmBytes, 10)
		}
		if err := unix.Mount("tmpfs", p, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, data); err != nil {
			return fmt.Errorf("mounting a private %s: %w", p, err)
		}
	}
	hidden = slices.Clone(hidden)
	slices.Sort(hidden)
	for _, p := range hidden {
		fi, err := os.Stat(p)
		if err != nil || !fi.IsDir() {
			continue // gone, or already below a hidden directory
		}
		if err := unix.Mount("tmpfs", p, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, hideMountData); err != nil {
			return fmt.Errorf("hiding %s: %w", p, err)
		}
	}
	var got unix.Stat_t
	if err := unix.Stat(dir, &got); err != nil || got.Dev != want.Dev || got.Ino != want.Ino {
		// Directories on the way may be passed, not listed.
		if err := os.MkdirAll(dir, 0o711); err != nil {
			return fmt.Errorf("recreating the working directory's path: %w", err)
		}
		if err := unix.Mount("/proc/self/fd/"+strconv.Itoa(wd), dir, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("mounting the working directory: %w", err)
		}
	}
	for i, b := range cfg.Binds {
		if err := bindMount(b, "/proc/self/fd/"+strconv.Itoa(srcs[i])); err != nil {
			return err
		}
	}
	if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("mounting /proc: %w", err)
	}
	return nil
}

// startAsUser starts cfg's command as the task's user with no_new_privs,
// its stdin /dev/null and the init's stdout and stderr, in the init's
// process group.
func startAsUser(cfg *InitConfig) (int, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := setAffinity(cfg.Affinity); err != nil {
		return 0, err
	}
	// no_new_privs belongs to the thread and is inherited by its children:
	// setuid binaries cannot raise the command's privileges.
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return 0, fmt.Errorf("setting no_new_privs: %w", err)
	}
	if err := denySubvolumes(); err != nil {
		return 0, err
	}
	devNull, err := os.Open(os.DevNull)
	if err != nil {
		return 0, err
	}
	defer devNull.Close()
	iso := cfg.Isolation
	pid, err := syscall.ForkExec(cfg.Path, cfg.Args, &syscall.ProcAttr{
		Dir:   cfg.Dir,
		Env:   cfg.Env,
		Files: []uintptr{devNull.Fd(), os.Stdout.Fd(), os.Stderr.Fd()},
		Sys: &syscall.SysProcAttr{
			Credential: &syscall.Credential{Uid: iso.Uid, Gid: iso.Gid, Groups: []uint32{}},
		},
	})
	if err != nil {
		for _, d := range privateDirs {
			if errors.Is(err, syscall.ENOENT) && within(cfg.Path, d) {
				return 0, fmt.Errorf("starting %s as uid %d: %w (the task has a %s of its own: put programs in its working directory)", cfg.Path, iso.Uid, err, d)
			}
		}
		return 0, fmt.Errorf("starting %s as uid %d: %w", cfg.Path, iso.Uid, err)
	}
	return pid, nil
}

// execAsUser replaces the process with cfg's command as the task's user;
// it returns only when that fails.
func execAsUser(cfg *InitConfig) error {
	runtime.LockOSThread()
	iso := cfg.Isolation
	if err := setAffinity(cfg.Affinity); err != nil {
		return err
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("setting no_new_privs: %w", err)
	}
	if err := denySubvolumes(); err != nil {
		return err
	}
	// As root: the working directory of a task from before the isolation
	// lies below directories private to root.
	if cfg.Dir != "" {
		if err := os.Chdir(cfg.Dir); err != nil {
			return err
		}
	}
	if err := syscall.Setgroups(nil); err != nil {
		return fmt.Errorf("clearing groups: %w", err)
	}
	if err := syscall.Setgid(int(iso.Gid)); err != nil {
		return fmt.Errorf("setgid %d: %w", iso.Gid, err)
	}
	if err := syscall.Setuid(int(iso.Uid)); err != nil {
		return fmt.Errorf("setuid %d: %w", iso.Uid, err)
	}
	err := syscall.Exec(cfg.Path, cfg.Args, cfg.Env)
	return fmt.Errorf("exec %s: %w", cfg.Path, err)
}

// InitCmd returns the command that runs the init helper (killed when ctx
// ends), the pipe the caller sends cfg on (SendConfig, once it started),
// the pipe it reads the init's status from, and a func that closes the
// child's ends of both, to call once it started (or failed to).
// cmd.ExtraFiles must stay as they are.
func InitCmd(ctx context.Context, cfg *InitConfig) (cmd *osexec.Cmd, cfgW, statusR *os.File, closeChild func(), err error) {
	cfgR, cfgW, err := os.Pipe()
	if err != nil {
		return nil, nil, nil, nil, err
	}
	statusR, statusW, err := os.Pipe()
	if err != nil {
		cfgR.Close()
		cfgW.Close()
		return nil, nil, nil, nil, err
	}
	exe, err := os.Executable()
	if err != nil {
		exe = os.Args[0]
	}
	// /proc/self/exe still works when the binary was replaced on disk or
	// is hidden from the task.
	cmd = osexec.CommandContext(ctx, "/proc/self/exe")
	cmd.Args = []string{exe, InitArg}
	// The init needs no environment; the command gets cfg.Env.
	cmd.Env = []string{}
	cmd.ExtraFiles = []*os.File{cfgR, statusW} // fds 3 and 4
	return cmd, cfgW, statusR, func() { cfgR.Close(); statusW.Close() }, nil
}

// SendConfig writes cfg to the init's config pipe and closes it.
func SendConfig(w *os.File, cfg *InitConfig) error {
	err := json.NewEncoder(w).Encode(cfg)
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sending the init config: %w", err)
	}
	return nil
}

// ReadStatus reads the init's first status line, giving up at ctx's
// deadline (or JoinTimeout without one). A start that failed is an error
// with the init's reason; end of file before a line means the command
// replaced the init (exec mode) when execOK is set.
func ReadStatus(ctx context.Context, r *os.File, br *bufio.Reader, execOK bool) error {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(JoinTimeout)
	}
	_ = r.SetReadDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = r.SetReadDeadline(time.Now()) })
	defer stop()
	line, err := br.ReadString('\n')
	_ = r.SetReadDeadline(time.Time{})
	line = strings.TrimSpace(line)
	switch {
	case line == initStatusStarted:
		return nil
	case strings.HasPrefix(line, "error: "):
		return errors.New(strings.TrimPrefix(line, "error: "))
	case err == io.EOF && line == "" && execOK:
		return nil
	case err != nil && ctx.Err() != nil:
		return fmt.Errorf("starting the task's init: %w", ctx.Err())
	case err != nil:
		return fmt.Errorf("the task's init ended before it started the command (%v)", err)
	}
	return fmt.Errorf("unexpected status %q from the task's init", line)
}

// parseExitLine reads "exit CODE SIGNAL" from the init's status pipe.
func parseExitLine(br *bufio.Reader) (code, sig int, ok bool) {
	line, _ := br.ReadString('\n')
	f := strings.Fields(line)
	if len(f) != 3 || f[0] != "exit" {
		return 0, 0, false
	}
	c, err1 := strconv.Atoi(f[1])
	s, err2 := strconv.Atoi(f[2])
	if err1 != nil || err2 != nil {
		return 0, 0, false
	}
	return c, s, true
}

// CgroupFD prepares cmd to start inside g on cgroup v2 and returns the
// cgroup.procs files its process must join itself (v1), and a func that
// releases what it opened.
func CgroupFD(cmd *osexec.Cmd, g *cgroup.Group) (procs []string, release func(), err error) {
	switch {
	case g == nil:
		return nil, func() {}, nil
	case g.Version == cgroup.V2:
		f, err := os.Open(g.UnifiedDir())
		if err != nil {
			return nil, nil, fmt.Errorf("opening cgroup: %w", err)
		}
		cmd.SysProcAttr.UseCgroupFD = true
		cmd.SysProcAttr.CgroupFD = int(f.Fd())
		return nil, func() { f.Close() }, nil
	}
	return g.ProcsFiles(), func() {}, nil
}

// within reports whether path is below dir.
func within(path, dir string) bool {
	rel, err := filepath.Rel(dir, path)
	return err == nil && rel != "." && rel != ".." && !strings.HasPrefix(rel, "../")
}

// bindMount binds b.Source, opened as src (an O_PATH descriptor's
// /proc/self/fd path), on b.Destination (read-only when asked), creating a
// missing destination (a directory, or an empty file for a file).
func bindMount(b Bind, src string) error {
	fi, err := os.Stat(src)
	if err != nil {
		return fmt.Errorf("bind mount source: %w", err)
	}
	if _, err := os.Stat(b.Destination); errors.Is(err, os.ErrNotExist) {
		if fi.IsDir() {
			err = os.MkdirAll(b.Destination, 0o755)
		} else if err = os.MkdirAll(filepath.Dir(b.Destination), 0o755); err == nil {
			var f *os.File
			if f, err = os.OpenFile(b.Destination, os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
				err = f.Close()
			}
		}
		if err != nil {
			return fmt.Errorf("creating mount point %s: %w", b.Destination, err)
		}
	}
	if err := unix.Mount(src, b.Destination, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("binding %s on %s: %w", b.Source, b.Destination, err)
	}
	if b.ReadOnly {
		flags := uintptr(unix.MS_BIND | unix.MS_REMOUNT | unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV)
		if err := unix.Mount("", b.Destination, "", flags, ""); err != nil {
			return fmt.Errorf("making %s read-only: %w", b.Destination, err)
		}
	}
	return nil
}

// setAffinity pins the calling thread (and the processes it starts) to
// cpus; "" leaves it as it is.
func setAffinity(cpus string) error {
	if cpus == "" {
		return nil
	}
	var set unix.CPUSet
	for part := range strings.SplitSeq(cpus, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		b := a
		if err == nil && isRange {
			b, err = strconv.Atoi(hi)
		}
		if err != nil || a < 0 || b < a {
			return fmt.Errorf("bad cpuset %q", cpus)
		}
		for c := a; c <= b; c++ {
			set.Set(c)
		}
	}
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		return fmt.Errorf("pinning the task to CPUs %s: %w", cpus, err)
	}
	return nil
}

// withAffinity runs fn (which starts a process) on a thread of its own
// pinned to cpus, which ends with it; "" runs fn as it is.
func withAffinity(cpus string, fn func() error) error {
	if cpus == "" {
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: the thread's affinity is the task's, and the
		// runtime ends the thread with this goroutine.
		if err := setAffinity(cpus); err != nil {
			errc <- err
			return
		}
		errc <- fn()
	}()
	return <-errc
}
