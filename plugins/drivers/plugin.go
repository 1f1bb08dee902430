package drivers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/corral-dev/corral/plugins/drivers/proto"
)

// PluginTypeDriver is the go-plugin plugin name under which a driver plugin
// serves its Driver service, and the type its PluginInfo reports.
const PluginTypeDriver = "driver"

// Handshake is the go-plugin handshake between the corral agent and driver
// plugins. ProtocolVersion is the go-plugin protocol version of the wire
// format in plugins/drivers/proto; the Go interface version is APIVersion,
// checked separately through PluginInfo once connected. The magic cookie
// only keeps a user from running a plugin binary by hand: it is no security
// measure.
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  1,
	MagicCookieKey:   "CORRAL_PLUGIN_MAGIC_COOKIE",
	MagicCookieValue: "d6a1c0e2f79b4e3c8a5f0b1e27c94d3a6f8e1b5c0d2a7f9e",
}

// ErrIncompatiblePlugin is returned for a plugin that is no driver plugin or
// speaks another version of the driver API than the agent.
var ErrIncompatiblePlugin = errors.New("incompatible plugin")

// ErrPluginExited is returned by calls to an external driver whose plugin
// process has exited or can no longer be reached.
var ErrPluginExited = errors.New("driver plugin exited")

// ErrStoppedByDriver is wrapped by the ExitResult.Err of a task that the
// driver itself stopped for a reason of its own (a limit it enforces): the
// error says why, and the exit status is not what matters.
var ErrStoppedByDriver = errors.New("stopped by the driver")

// PluginInfo identifies a plugin and the versions it was built with.
type PluginInfo struct {
	// Type is the plugin type, PluginTypeDriver for drivers.
	Type string
	// Name is the driver's name.
	Name string
	// APIVersion is the APIVersion the plugin was built with.
	APIVersion string
	// PluginVersion is the plugin's own version, free form.
	PluginVersion string
}

// String returns "name (plugin version V, API version A)".
func (i *PluginInfo) String() string {
	v := i.PluginVersion
	if v == "" {
		v = "unknown"
	}
	return fmt.Sprintf("%s (plugin version %s, API version %s)", i.Name, v, i.APIVersion)
}

// PluginVersioner may be implemented by a driver served with Serve to report
// its own version to the agent.
type PluginVersioner interface {
	// PluginVersion returns the plugin's version, e.g. "1.2.0".
	PluginVersion() string
}

// CheckPluginInfo returns an error wrapping ErrIncompatiblePlugin unless
// info describes a driver plugin of this API version.
func CheckPluginInfo(info *PluginInfo) error {
	switch {
	case info.Type != PluginTypeDriver:
		return fmt.Errorf("%w: plugin type %q, agent wants %q", ErrIncompatiblePlugin, info.Type, PluginTypeDriver)
	case info.APIVersion != APIVersion:
		return fmt.Errorf("%w: API version %s, agent wants %s: rebuild the plugin against this corral version",
			ErrIncompatiblePlugin, info.APIVersion, APIVersion)
	case info.Name == "":
		return fmt.Errorf("%w: the driver has an empty name", ErrIncompatiblePlugin)
	}
	return nil
}

// pluginInfoTimeout bounds the calls the client makes when it connects.
const pluginInfoTimeout = 10 * time.Second

// GRPCDriverPlugin is the go-plugin plugin of a driver, over gRPC only. A
// plugin process serves Impl; the agent side leaves Impl nil and gets a
// Driver talking to the plugin from Dispense.
type GRPCDriverPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	// Impl is the served driver; nil on the agent side.
	Impl Driver
}

var _ plugin.GRPCPlugin = (*GRPCDriverPlugin)(nil)

// GRPCServer registers the Driver service of p.Impl on s.
func (p *GRPCDriverPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	if p.Impl == nil {
		return errors.New("driver plugin: no driver to serve")
	}
	proto.RegisterDriverServer(s, newServer(p.Impl))
	return nil
}

// GRPCClient returns a *Client for the plugin behind conn after checking its
// PluginInfo with CheckPluginInfo. ctx ends when the plugin process exits.
func (p *GRPCDriverPlugin) GRPCClient(ctx context.Context, _ *plugin.GRPCBroker, conn *grpc.ClientConn) (any, error) {
	return NewClient(ctx, conn)
}

// PluginSet returns the go-plugin plugin set that serves d, or with a nil d
// the one the agent dispenses drivers from.
func PluginSet(d Driver) plugin.PluginSet {
	return plugin.PluginSet{PluginTypeDriver: &GRPCDriverPlugin{Impl: d}}
}

// Serve serves d as an external driver plugin: the main function of a
// plugin binary calls it and nothing else. It returns when the agent ends
// the plugin. Run by hand, without the agent's handshake, it prints that
// the binary is a plugin and exits 1. Log with PluginLogger: the agent
// forwards the plugin's log lines into its own log.
func Serve(d Driver) {
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: Handshake,
		Plugins:         PluginSet(d),
		GRPCServer:      plugin.DefaultGRPCServer,
		Logger: hclog.New(&hclog.LoggerOptions{
			Name:       d.Name(),
			Level:      hclog.Info,
			Output:     os.Stderr,
			JSONFormat: true,
		}),
	})
}

// hclogTimeFormat is the timestamp layout go-plugin parses in the JSON log
// lines of a plugin.
const hclogTimeFormat = "2006-01-02T15:04:05.000000Z07:00"

// PluginLogger returns a logger for a plugin process, at level and above:
// JSON lines on stderr in the format the agent's go-plugin client parses,
// so that they reach the agent's log with their level and attributes.
func PluginLogger(level slog.Leveler) *slog.Logger {
	return slog.New(pluginLogHandler(os.Stderr, level))
}

func pluginLogHandler(w io.Writer, level slog.Leveler) slog.Handler {
	return slog.NewJSONHandler(w, &slog.HandlerOptions{
		Level: level,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) > 0 {
				return a
			}
			switch a.Key {
			case slog.TimeKey:
				return slog.String("@timestamp", a.Value.Time().Format(hclogTimeFormat))
			case slog.LevelKey:
				lvl, _ := a.Value.Any().(slog.Level)
				return slog.String("@level", hclogLevel(lvl))
			case slog.MessageKey:
				return slog.String("@message", a.Value.String())
			}
			return a
		},
	})
}

// hclogLevel returns the hclog name of an slog level.
func hclogLevel(l slog.Level) string {
	switch {
	case l < slog.LevelDebug:
		return "trace"
	case l < slog.LevelInfo:
		return "debug"
	case l < slog.LevelWarn:
		return "info"
	case l < slog.LevelError:
		return "warn"
	default:
		return "error"
	}
}

// errorCodes maps the sentinel errors to the gRPC codes that carry them,
// in the order they are tested.
var errorCodes = []struct {
	err  error
	code codes.Code
}{
	{ErrTaskNotFound, codes.NotFound},
	{ErrTaskExists, codes.AlreadyExists},
	{ErrInvalidConfig, codes.InvalidArgument},
	{ErrNotSupported, codes.Unimplemented},
	{ErrTaskNotRunning, codes.FailedPrecondition},
	{context.Canceled, codes.Canceled},
	{context.DeadlineExceeded, codes.DeadlineExceeded},
}

// toStatus turns a driver error into a gRPC status error with the code of
// the sentinel it wraps (Unknown for others) and its full message.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	for _, ec := range errorCodes {
		if errors.Is(err, ec.err) {
			return status.Error(ec.code, err.Error())
		}
	}
	return status.Error(codes.Unknown, err.Error())
}

// remoteError is an error returned by a driver plugin: its message as the
// plugin wrote it, and the sentinel its gRPC code stands for.
type remoteError struct {
	msg  string
	kind error // nil: no sentinel
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.kind }

// fromStatus turns the error of a call to a plugin back into a driver
// error: errors.Is finds the sentinel its code stands for.
func fromStatus(err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	msg := st.Message()
	for _, ec := range errorCodes {
		if st.Code() == ec.code {
			if !strings.Contains(msg, ec.err.Error()) {
				msg = ec.err.Error() + ": " + msg
			}
			return &remoteError{msg: msg, kind: ec.err}
		}
	}
	return &remoteError{msg: msg}
}
