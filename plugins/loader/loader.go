// Package loader finds external driver plugins in the agent's plugin
// directory, launches each as a process with hashicorp/go-plugin (gRPC
// only), checks its handshake and API version, and hands the agent a
// drivers.Driver for every plugin it accepts.
package loader

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-plugin"

	"github.com/corral-dev/corral/plugins/drivers"
)

// startTimeout bounds the launch and handshake of one plugin.
const startTimeout = 20 * time.Second

// RefusedError is the error for a plugin the loader did not load: why, and
// which file.
type RefusedError struct {
	Path string
	Err  error
}

func (e *RefusedError) Error() string { return fmt.Sprintf("plugin %s refused: %v", e.Path, e.Err) }
func (e *RefusedError) Unwrap() error { return e.Err }

// Load launches every executable file in dir as a driver plugin and returns
// the drivers of those that pass the go-plugin handshake (magic cookie,
// protocol version, gRPC) and report this agent's drivers.APIVersion, each
// a *Supervisor with the default Policy, and a func that kills all their
// processes for good (call it when the agent stops). Each
// plugin that is refused is logged in one line and gets a *RefusedError in
// the returned errors; the others load regardless. Directories and files
// without an execute bit are skipped. An empty dir loads nothing. ctx is
// checked between plugins.
//
// A plugin that later exits is relaunched and recovers its tasks (see
// Supervisor).
func Load(ctx context.Context, dir string, logger *slog.Logger) ([]drivers.Driver, func(), []error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if dir == "" {
		return nil, func() {}, nil
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		err = fmt.Errorf("reading the plugin dir: %w", err)
		logger.Error(err.Error(), "plugin_dir", dir)
		return nil, func() {}, []error{err}
	}
	var (
		loaded []drivers.Driver
		kills  []func()
		errs   []error
		byName = map[string]string{} // driver name -> plugin path
	)
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			errs = append(errs, fmt.Errorf("loading plugins from %s: %w", dir, err))
			break
		}
		path := filepath.Join(dir, e.Name())
		fi, err := os.Stat(path) // follows symlinks
		if err != nil {
			err = &RefusedError{Path: path, Err: err}
			logger.Error(err.Error(), "plugin", path)
			errs = append(errs, err)
			continue
		}
		if fi.IsDir() {
			continue
		}
		if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
			logger.Debug("skipping a plugin dir entry that is not an executable file", "path", path, "mode", fi.Mode().String())
			continue
		}
		d, err := Supervise(path, logger, Policy{})
		if err == nil {
			if other, taken := byName[d.Name()]; taken {
				d.Close()
				err = &RefusedError{Path: path, Err: fmt.Errorf("driver name %q is taken by plugin %s", d.Name(), other)}
			}
		}
		if err != nil {
			logger.Error(err.Error(), "plugin", path)
			errs = append(errs, err)
			continue
		}
		byName[d.Name()] = path
		loaded = append(loaded, d)
		kills = append(kills, d.Close)
	}
	var once sync.Once
	killAll := func() {
		once.Do(func() {
			var wg sync.WaitGroup
			for _, kill := range kills {
				wg.Go(kill)
			}
			wg.Wait()
		})
	}
	return loaded, killAll, errs
}

// Launch starts the plugin binary at path as a child process, completes
// the handshake and returns its driver and a func that ends its process
// (safe to call more than once). A plugin that fails the handshake, does
// not speak gRPC or reports another API version is killed and refused with
// a *RefusedError that says why. The plugin's log lines go to logger at
// their own levels; go-plugin's own messages at debug level.
//
// The kernel kills the plugin (SIGKILL) when the OS thread that launched it
// ends, which for an unlocked goroutine means when this process ends: a
// plugin never outlives its agent, not even a kill -9 of it. Its tasks
// should not be its children in its process group (see package shim), so
// that they survive it.
func Launch(path string, logger *slog.Logger) (*drivers.Client, func(), error) {
	d, _, kill, err := launch(path, logger)
	return d, kill, err
}

// launch is Launch that also returns the plugin's pid.
func launch(path string, logger *slog.Logger) (*drivers.Client, int, func(), error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	path, err := filepath.Abs(path)
	if err != nil {
		return nil, 0, nil, &RefusedError{Path: path, Err: err}
	}
	log := logger.With("plugin", path)
	stderr := &stderrTail{}
	cmd := exec.Command(path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  drivers.Handshake,
		Plugins:          drivers.PluginSet(nil),
		Cmd:              cmd,
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		Logger:           newHCLogger(log, filepath.Base(path)),
		StartTimeout:     startTimeout,
		Stderr:           stderr,
	})
	refuse := func(err error) (*drivers.Client, int, func(), error) {
		client.Kill()
		return nil, 0, nil, &RefusedError{Path: path, Err: err}
	}
	rpc, err := client.Client()
	if err != nil {
		return refuse(handshakeError(err, stderr.String()))
	}
	raw, err := rpc.Dispense(drivers.PluginTypeDriver)
	if err != nil {
		return refuse(err)
	}
	d, ok := raw.(*drivers.Client)
	if !ok {
		return refuse(fmt.Errorf("dispensed a %T, not a driver", raw))
	}
	pid := cmd.Process.Pid
	var killed atomic.Bool
	kill := func() {
		killed.Store(true)
		client.Kill()
	}
	go func() {
		<-d.Done()
		if !killed.Load() {
			log.Error("driver plugin exited", "driver", d.Name(), "pid", pid)
		}
	}()
	info := d.PluginInfo()
	log.Info("driver plugin loaded", "driver", info.Name, "pid", pid, "plugin_version", info.PluginVersion, "api_version", info.APIVersion)
	return d, pid, kill, nil
}

// handshakeError says in one line why go-plugin could not connect to a
// plugin, with what the plugin printed on stderr.
func handshakeError(err error, stderr string) error {
	text := err.Error()
	first, _, _ := strings.Cut(text, "\n")
	var msg string
	switch {
	case strings.Contains(text, "plugin exited before we could connect"),
		strings.Contains(text, "Failed to read any lines from plugin's stdout"):
		msg = "it exited during the handshake: not a corral driver plugin, or one built with another magic cookie"
	case strings.Contains(text, "Unrecognized remote plugin message"):
		msg = "not a go-plugin plugin: " + oneLine(first)
	case strings.Contains(text, "incompatible API version with plugin"):
		msg = fmt.Sprintf("go-plugin protocol version mismatch, agent speaks %d: %s", drivers.Handshake.ProtocolVersion, oneLine(text))
	case strings.Contains(text, "unsupported plugin protocol"):
		msg = "it does not speak gRPC: " + oneLine(text)
	default:
		msg = "handshake failed: " + oneLine(text)
	}
	if stderr != "" {
		msg += " (its stderr: " + stderr + ")"
	}
	return errors.New(msg)
}

// oneLine joins the lines of s, for errors that end in one log line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// stderrTail keeps the end of what a plugin printed on stderr, leaving out
// the JSON log lines (which reach the log anyway), for error messages.
type stderrTail struct {
	mu    sync.Mutex
	line  []byte
	lines []string
}

const (
	stderrTailLines   = 4
	stderrTailLineLen = 300
)

func (s *stderrTail) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, b := range p {
		if b != '\n' {
			if len(s.line) < stderrTailLineLen {
				s.line = append(s.line, b)
			}
			continue
		}
		line := strings.TrimSpace(string(s.line))
		s.line = s.line[:0]
		if line == "" || strings.HasPrefix(line, "{") {
			continue
		}
		s.lines = append(s.lines, line)
		if len(s.lines) > stderrTailLines {
			s.lines = s.lines[1:]
		}
	}
	return len(p), nil
}

// String returns the kept lines joined by spaces.
func (s *stderrTail) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Join(s.lines, " ")
}
