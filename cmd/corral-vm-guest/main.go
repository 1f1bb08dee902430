// Command corral-vm-guest is the guest agent of the vm driver: PID 1 of
// every VM kernel, a static binary (CGO_ENABLED=0) in the guest's
// initramfs. It mounts the pseudo filesystems, loads the virtio modules,
// runs the session's command from /corral/task.json with its stdout and
// stderr on virtio-serial ports that are files on the host, serves `session
// exec` and signals over the control port, turns an ACPI power button press
// (the host's Stop) into SIGTERM for the command, writes how the command
// ended to the exit port and powers the VM off.
//
// Build it with `make vm-guest`, which also prepares the guest's kernel and
// initramfs (scripts/vm-guest.sh).
package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/corral-dev/corral/drivers/vm/guestproto"
)

func main() {
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "corral-vm-guest is the init of a corral VM; it runs only as PID 1 of a guest")
		os.Exit(1)
	}
	g := &guest{execs: map[uint32]*execProc{}}
	g.run()
	g.powerOff()
}

// logf writes a line to the console (the kernel log on the host).
func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "corral-vm-guest: "+format+"\n", args...)
}

type guest struct {
	exitPort *os.File

	mu      sync.Mutex
	ctl     *os.File // the control port, nil if there is none
	ctlMu   sync.Mutex
	main    *exec.Cmd
	signals []syscall.Signal // signals that arrived before main started
	execs   map[uint32]*execProc
}

type execProc struct {
	cmd   *exec.Cmd
	stdin *stdinQueue
}

// stdinQueue writes an exec's stdin chunks in order, in a goroutine of its
// own, so that a command that does not read its stdin never stalls the
// control channel.
type stdinQueue struct {
	mu     sync.Mutex
	cond   *sync.Cond
	chunks [][]byte
	closed bool
}

func newStdinQueue(w io.WriteCloser) *stdinQueue {
	q := &stdinQueue{}
	q.cond = sync.NewCond(&q.mu)
	go func() {
		for {
			q.mu.Lock()
			for len(q.chunks) == 0 && !q.closed {
				q.cond.Wait()
			}
			if len(q.chunks) == 0 {
				q.mu.Unlock()
				_ = w.Close()
				return
			}
			b := q.chunks[0]
			q.chunks = q.chunks[1:]
			q.mu.Unlock()
			if _, err := w.Write(b); err != nil {
				// The command closed its stdin: drop the rest.
				q.mu.Lock()
				q.chunks, q.closed = nil, true
				q.mu.Unlock()
			}
		}
	}()
	return q
}

func (q *stdinQueue) push(b []byte) {
	q.mu.Lock()
	if !q.closed {
		q.chunks = append(q.chunks, b)
	}
	q.mu.Unlock()
	q.cond.Signal()
}

func (q *stdinQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	q.cond.Signal()
}

func (g *guest) run() {
	if err := setup(); err != nil {
		logf("setup: %v", err)
	}
	loadModules()
	ports := findPorts(30 * time.Second)
	open := func(name string) *os.File {
		p, ok := ports[name]
		if !ok {
			logf("virtio port %s not found", name)
			return nil
		}
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		if err != nil {
			logf("opening %s: %v", p, err)
			return nil
		}
		return f
	}
	g.exitPort = open(guestproto.PortExit)
	stdout, stderr := open(guestproto.PortStdout), open(guestproto.PortStderr)
	g.ctl = open(guestproto.PortControl)
	go g.watchPowerButton()

	task, err := readTask()
	if err != nil {
		g.finish(guestproto.Exit{ExitCode: -1, Error: err.Error()})
		return
	}
	if task.RootDisk {
		if err := mountRootDisk(); err != nil {
			g.finish(guestproto.Exit{ExitCode: -1, Error: err.Error()})
			return
		}
	}
	if task.Hostname != "" {
		_ = unix.Sethostname([]byte(task.Hostname))
	}
	configureNetwork(task.NICs)
	writeHosts(task)
	if task.Chroot {
		if err := prepareRoot(task); err != nil {
			g.finish(guestproto.Exit{ExitCode: -1, Error: "preparing the image root: " + err.Error()})
			return
		}
	}
	// Volumes last, over the image root's /proc, /dev, /tmp and /run
	// binds: a volume at /tmp/data must not be hidden by the guest's /tmp.
	if err := mountShares(task.Shares); err != nil {
		g.finish(guestproto.Exit{ExitCode: -1, Error: err.Error()})
		return
	}
	// Execs and signals are served once the guest is set up (network,
	// image root); until then they wait in the port.
	if g.ctl != nil {
		go g.serveControl()
	}
	cmd := command(task, task.Command, task.Env)
	cmd.Stdout, cmd.Stderr = orDiscard(stdout), orDiscard(stderr)
	cmd.SysProcAttr.Setsid = true
	g.mu.Lock()
	err = cmd.Start()
	if err == nil {
		g.main = cmd
		for _, s := range g.signals {
			_ = syscall.Kill(-cmd.Process.Pid, s)
		}
	}
	g.mu.Unlock()
	if err != nil {
		g.finish(guestproto.Exit{ExitCode: 127, Error: fmt.Sprintf("starting %q: %v", task.Command[0], err)})
		return
	}
	g.reapUntil(cmd.Process.Pid)
}

// command makes the exec.Cmd of argv for task, chrooted into the image
// root when the task has one.
func command(task *guestproto.Task, argv, env []string) *exec.Cmd {
	cmd := &exec.Cmd{Path: argv[0], Args: argv, Env: env, SysProcAttr: &syscall.SysProcAttr{}}
	root := "/"
	if task.Chroot {
		root = guestproto.RootDir
		cmd.SysProcAttr.Chroot = root
	}
	if !strings.Contains(argv[0], "/") {
		cmd.Path = lookPath(root, argv[0], env)
	}
	cmd.Dir = task.WorkDir
	if cmd.Dir == "" {
		cmd.Dir = "/"
	}
	if task.Chroot {
		// Dir is resolved after the chroot.
		_ = os.MkdirAll(filepath.Join(root, cmd.Dir), 0o755)
	} else {
		_ = os.MkdirAll(cmd.Dir, 0o755)
	}
	return cmd
}

// lookPath finds file in the PATH of env below root; it returns file as is
// when it finds nothing, so that the start fails with "not found".
func lookPath(root, file string, env []string) string {
	path := "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			path = v
		}
	}
	for _, dir := range filepath.SplitList(path) {
		p := filepath.Join(dir, file)
		if fi, err := os.Stat(filepath.Join(root, p)); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	return file
}

func orDiscard(f *os.File) io.Writer {
	if f == nil {
		return io.Discard
	}
	return f
}

// reapUntil reaps every child (PID 1 inherits orphans) until pid exited,
// then records how it ended.
func (g *guest) reapUntil(pid int) {
	for {
		var ws syscall.WaitStatus
		wpid, err := syscall.Wait4(-1, &ws, 0, nil)
		if err != nil {
			if errors.Is(err, syscall.EINTR) {
				continue
			}
			g.finish(guestproto.Exit{ExitCode: -1, Error: "waiting for the command: " + err.Error()})
			return
		}
		if wpid != pid {
			g.reaped(wpid, ws)
			continue
		}
		switch {
		case ws.Signaled():
			g.finish(guestproto.Exit{ExitCode: 128 + int(ws.Signal()), Signal: int(ws.Signal())})
		default:
			g.finish(guestproto.Exit{ExitCode: ws.ExitStatus()})
		}
		return
	}
}

// reaped hands the status of an exec's process to its waiter.
func (g *guest) reaped(pid int, ws syscall.WaitStatus) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for id, p := range g.execs {
		if p.cmd.Process != nil && p.cmd.Process.Pid == pid {
			delete(g.execs, id)
			code := ws.ExitStatus()
			if ws.Signaled() {
				code = 128 + int(ws.Signal())
			}
			go g.execEnded(id, p, code)
			return
		}
	}
}

func (g *guest) finish(e guestproto.Exit) {
	if e.Error != "" {
		logf("%s", e.Error)
	}
	if g.exitPort == nil {
		logf("no exit port: exit code %d is lost", e.ExitCode)
		return
	}
	b, _ := json.Marshal(e)
	if _, err := g.exitPort.Write(append(b, '\n')); err != nil {
		logf("writing the exit record: %v", err)
	}
	_ = g.exitPort.Sync()
}

func (g *guest) powerOff() {
	syscall.Sync()
	// The host's qemu runs with -no-reboot: power off or a reboot both end
	// it.
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	select {}
}

func setup() error {
	mounts := []struct {
		src, dst, fstype string
		flags            uintptr
	}{
		{"proc", "/proc", "proc", 0},
		{"sysfs", "/sys", "sysfs", 0},
		{"devtmpfs", "/dev", "devtmpfs", 0},
		{"devpts", "/dev/pts", "devpts", 0},
		{"tmpfs", "/dev/shm", "tmpfs", 0},
		{"tmpfs", "/tmp", "tmpfs", 0},
		{"tmpfs", "/run", "tmpfs", 0},
	}
	var errs []error
	for _, m := range mounts {
		_ = os.MkdirAll(m.dst, 0o755)
		if err := unix.Mount(m.src, m.dst, m.fstype, m.flags, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			errs = append(errs, fmt.Errorf("mount %s: %w", m.dst, err))
		}
	}
	// PID 1 ignores nothing by default; the command gets default handlers
	// anyway (exec resets them).
	signal.Ignore(syscall.SIGHUP, syscall.SIGPIPE)
	return errors.Join(errs...)
}

// loadModules loads the modules listed in ModulesDir/order, retrying those
// whose dependencies were not loaded yet.
func loadModules() {
	b, err := os.ReadFile(filepath.Join(guestproto.ModulesDir, "order"))
	if err != nil {
		return
	}
	pending := strings.Fields(string(b))
	for len(pending) > 0 {
		var left []string
		var lastErr error
		for _, name := range pending {
			f, err := os.Open(filepath.Join(guestproto.ModulesDir, name))
			if err != nil {
				logf("module %s: %v", name, err)
				continue
			}
			err = unix.FinitModule(int(f.Fd()), "", 0)
			f.Close()
			if err != nil && !errors.Is(err, unix.EEXIST) {
				left, lastErr = append(left, name), err
			}
		}
		if len(left) == len(pending) {
			logf("modules %v not loaded: %v", left, lastErr)
			return
		}
		pending = left
	}
}

// findPorts waits until the virtio-serial ports appear and returns their
// device paths by name.
func findPorts(timeout time.Duration) map[string]string {
	want := []string{guestproto.PortStdout, guestproto.PortStderr, guestproto.PortExit, guestproto.PortControl}
	deadline := time.Now().Add(timeout)
	for {
		ports := map[string]string{}
		dirs, _ := filepath.Glob("/sys/class/virtio-ports/*")
		for _, d := range dirs {
			name, err := os.ReadFile(filepath.Join(d, "name"))
			if err != nil {
				continue
			}
			dev := "/dev/" + filepath.Base(d)
			if _, err := os.Stat(dev); err == nil {
				ports[strings.TrimSpace(string(name))] = dev
			}
		}
		all := true
		for _, w := range want {
			if _, ok := ports[w]; !ok {
				all = false
			}
		}
		if all || time.Now().After(deadline) {
			return ports
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func readTask() (*guestproto.Task, error) {
	b, err := os.ReadFile(guestproto.TaskFile)
	if err != nil {
		return nil, fmt.Errorf("reading the task: %w", err)
	}
	var t guestproto.Task
	if err := json.Unmarshal(b, &t); err != nil {
		return nil, fmt.Errorf("reading the task: %w", err)
	}
	if t.Version < 1 || t.Version > guestproto.Version {
		return nil, fmt.Errorf("task of protocol version %d, this guest agent speaks 1 to %d: rebuild the guest initramfs (make vm-guest)", t.Version, guestproto.Version)
	}
	if len(t.Command) == 0 || t.Command[0] == "" {
		return nil, errors.New("the task has no command")
	}
	return &t, nil
}

// writeHosts writes /etc/hosts (in the image root too) with the hostname
// and the task's extra entries, and /etc/resolv.conf when the task has one.
func writeHosts(t *guestproto.Task) {
	var b bytes.Buffer
	b.WriteString("127.0.0.1\tlocalhost\n")
	if t.Hostname != "" {
		fmt.Fprintf(&b, "127.0.1.1\t%s\n", t.Hostname)
	}
	for h, a := range t.Hosts {
		fmt.Fprintf(&b, "%s\t%s\n", a, h)
	}
	for _, root := range []string{"/", guestproto.RootDir} {
		if root != "/" && !t.Chroot {
			continue
		}
		_ = os.MkdirAll(filepath.Join(root, "etc"), 0o755)
		_ = os.WriteFile(filepath.Join(root, "etc", "hosts"), b.Bytes(), 0o644)
		if t.ResolvConf != "" {
			_ = os.WriteFile(filepath.Join(root, "etc", "resolv.conf"), []byte(t.ResolvConf), 0o644)
		}
	}
}

// mountShares mounts the host directories qemu exports over virtio-9p
// (the task's volumes), read-only where asked.
func mountShares(shares []guestproto.Share) error {
	for _, sh := range shares {
		if err := os.MkdirAll(sh.Path, 0o755); err != nil {
			return fmt.Errorf("volume at %s: %w", sh.Path, err)
		}
		var flags uintptr = unix.MS_NOSUID | unix.MS_NODEV
		if sh.ReadOnly {
			flags |= unix.MS_RDONLY
		}
		if err := unix.Mount(sh.Tag, sh.Path, "9p", flags, "trans=virtio,version=9p2000.L,msize=262144,cache=none"); err != nil {
			return fmt.Errorf("mounting the volume at %s (virtio-9p %s): %w (a guest initramfs without the 9p modules: rerun make vm-guest)", sh.Path, sh.Tag, err)
		}
	}
	return nil
}

// prepareRoot mounts /proc, /sys, /dev and friends into the image root.
func prepareRoot(t *guestproto.Task) error {
	for _, d := range []string{"proc", "sys", "dev", "tmp", "run"} {
		dst := filepath.Join(guestproto.RootDir, d)
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return err
		}
		if err := unix.Mount("/"+d, dst, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind %s: %w", d, err)
		}
	}
	return nil
}

// watchPowerButton reads the input devices for KEY_POWER (an ACPI power
// button press: the host's system_powerdown) and sends SIGTERM to the
// command.
func (g *guest) watchPowerButton() {
	var devs []string
	for i := 0; i < 100 && len(devs) == 0; i++ {
		names, _ := filepath.Glob("/sys/class/input/event*/device/name")
		for _, n := range names {
			b, _ := os.ReadFile(n)
			if strings.Contains(string(b), "Power Button") {
				devs = append(devs, "/dev/input/"+filepath.Base(filepath.Dir(filepath.Dir(n))))
			}
		}
		if len(devs) == 0 {
			time.Sleep(100 * time.Millisecond)
		}
	}
	for _, d := range devs {
		go func() {
			f, err := os.Open(d)
			if err != nil {
				logf("power button %s: %v", d, err)
				return
			}
			defer f.Close()
			r := bufio.NewReader(f)
			var ev [24]byte // struct input_event on 64-bit
			for {
				if _, err := io.ReadFull(r, ev[:]); err != nil {
					return
				}
				typ := binary.LittleEndian.Uint16(ev[16:18])
				code := binary.LittleEndian.Uint16(ev[18:20])
				val := binary.LittleEndian.Uint32(ev[20:24])
				const evKey, keyPower = 1, 116
				if typ == evKey && code == keyPower && val == 1 {
					logf("ACPI power button: stopping the command")
					g.signalMain(syscall.SIGTERM)
				}
			}
		}()
	}
}

func (g *guest) signalMain(s syscall.Signal) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.main == nil {
		g.signals = append(g.signals, s)
		return
	}
	_ = syscall.Kill(-g.main.Process.Pid, s)
}

func (g *guest) send(f guestproto.Frame) {
	g.ctlMu.Lock()
	defer g.ctlMu.Unlock()
	if err := guestproto.WriteFrame(g.ctl, f); err != nil {
		logf("control port: %v", err)
	}
}

// serveControl reads frames from the host until the port fails.
func (g *guest) serveControl() {
	r := bufio.NewReader(g.ctl)
	for {
		f, err := guestproto.ReadFrame(r)
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				// No host connected (a plugin restarting): poll again.
				time.Sleep(200 * time.Millisecond)
				r.Reset(g.ctl)
				continue
			}
			logf("control port: %v", err)
			time.Sleep(200 * time.Millisecond)
			r.Reset(g.ctl)
			continue
		}
		g.handle(f)
	}
}

func (g *guest) handle(f guestproto.Frame) {
	switch f.Type {
	case guestproto.FrameHello:
		// Execs of an earlier connection have nobody to talk to.
		g.mu.Lock()
		for id, p := range g.execs {
			_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
			delete(g.execs, id)
		}
		g.mu.Unlock()
	case guestproto.FrameSignal:
		if len(f.Payload) != 1 {
			return
		}
		s := syscall.Signal(f.Payload[0])
		if f.ID == guestproto.MainID {
			g.signalMain(s)
			return
		}
		g.mu.Lock()
		if p := g.execs[f.ID]; p != nil {
			_ = syscall.Kill(-p.cmd.Process.Pid, s)
		}
		g.mu.Unlock()
	case guestproto.FrameStart:
		g.startExec(f)
	case guestproto.FrameStdin:
		g.mu.Lock()
		p := g.execs[f.ID]
		g.mu.Unlock()
		if p != nil {
			p.stdin.push(f.Payload)
		}
	case guestproto.FrameStdinClose:
		g.mu.Lock()
		p := g.execs[f.ID]
		g.mu.Unlock()
		if p != nil {
			p.stdin.close()
		}
	}
}

func (g *guest) startExec(f guestproto.Frame) {
	fail := func(code int, msg string) {
		b, _ := json.Marshal(guestproto.Exit{ExitCode: code, Error: msg})
		g.send(guestproto.Frame{Type: guestproto.FrameExit, ID: f.ID, Payload: b})
	}
	var st guestproto.ExecStart
	if err := json.Unmarshal(f.Payload, &st); err != nil || len(st.Command) == 0 {
		fail(-1, "bad exec request")
		return
	}
	task, err := readTask()
	if err != nil {
		fail(-1, err.Error())
		return
	}
	cmd := command(task, st.Command, st.Env)
	cmd.SysProcAttr.Setsid = true
	stdin, err := cmd.StdinPipe()
	if err != nil {
		fail(-1, err.Error())
		return
	}
	cmd.Stdout = &frameWriter{g: g, typ: guestproto.FrameStdout, id: f.ID}
	cmd.Stderr = &frameWriter{g: g, typ: guestproto.FrameStderr, id: f.ID}
	p := &execProc{cmd: cmd, stdin: newStdinQueue(stdin)}
	// Hold the lock over Start so that the reaper finds the process.
	g.mu.Lock()
	err = cmd.Start()
	if err == nil {
		g.execs[f.ID] = p
	}
	g.mu.Unlock()
	if err != nil {
		fail(127, fmt.Sprintf("starting %q: %v", st.Command[0], err))
	}
}

// execEnded waits for the exec's output to be copied and reports its exit.
// PID 1 reaped the process already, so cmd.Wait only collects the copying
// goroutines (its wait4 fails with ECHILD).
func (g *guest) execEnded(id uint32, p *execProc, code int) {
	_ = p.cmd.Wait()
	b, _ := json.Marshal(guestproto.Exit{ExitCode: code})
	g.send(guestproto.Frame{Type: guestproto.FrameExit, ID: id, Payload: b})
}

// frameWriter sends what an exec writes as frames of its ID.
type frameWriter struct {
	g   *guest
	typ byte
	id  uint32
}

func (w *frameWriter) Write(p []byte) (int, error) {
	for off := 0; off < len(p); off += 32 << 10 {
		end := min(off+32<<10, len(p))
		w.g.send(guestproto.Frame{Type: w.typ, ID: w.id, Payload: p[off:end]})
	}
	return len(p), nil
}

// configureNetwork brings up lo and each NIC (found by MAC) with its
// addresses and default route, with busybox's ip.
func configureNetwork(nics []guestproto.NIC) {
	ip := func(args ...string) {
		if out, err := exec.Command("/bin/ip", args...).CombinedOutput(); err != nil {
			logf("ip %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
		}
	}
	ip("link", "set", "lo", "up")
	if len(nics) == 0 {
		return
	}
	byMAC := map[string]string{}
	for i := 0; i < 100; i++ {
		dirs, _ := filepath.Glob("/sys/class/net/*/address")
		for _, a := range dirs {
			b, _ := os.ReadFile(a)
			byMAC[strings.TrimSpace(string(b))] = filepath.Base(filepath.Dir(a))
		}
		all := true
		for _, n := range nics {
			if _, ok := byMAC[strings.ToLower(n.MAC)]; !ok {
				all = false
			}
		}
		if all {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, n := range nics {
		dev, ok := byMAC[strings.ToLower(n.MAC)]
		if !ok {
			logf("no interface with MAC %s", n.MAC)
			continue
		}
		for _, a := range n.Addresses {
			ip("addr", "add", a, "dev", dev)
		}
		ip("link", "set", dev, "up")
		if n.Gateway != "" {
			ip("route", "add", "default", "via", n.Gateway, "dev", dev)
		}
	}
}
