package logging

import (
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"time"

	"github.com/hashicorp/go-hclog"
)

// HCLog returns an hclog.Logger (raft's) that logs through l, its name
// in the "component" key and its key-value pairs as attributes.
func HCLog(l *slog.Logger, name string) hclog.Logger {
	return &hcLogger{l: l, name: name}
}

type hcLogger struct {
	l       *slog.Logger
	name    string
	implied []any
}

var _ hclog.Logger = (*hcLogger)(nil)

// hcLevel maps an hclog level to the slog level its lines log at.
func hcLevel(l hclog.Level) slog.Level {
	switch l {
	case hclog.Trace:
		return LevelTrace
	case hclog.Warn:
		return slog.LevelWarn
	case hclog.Error:
		return slog.LevelError
	default: // Debug, Info: the library's chatter
		return slog.LevelDebug
	}
}

func (h *hcLogger) Log(level hclog.Level, msg string, args ...any) {
	if level == hclog.Off {
		return
	}
	lvl := hcLevel(level)
	if lvl == slog.LevelWarn && startupElection(msg, args) {
		lvl = slog.LevelInfo
	}
	ctx := context.Background()
	if !h.l.Enabled(ctx, lvl) {
		return
	}
	attrs := make([]any, 0, len(args)+2)
	if h.name != "" {
		attrs = append(attrs, "component", h.name)
	}
	for i, a := range args {
		if i%2 == 1 || i == len(args)-1 {
			a = attrValue(a)
		}
		attrs = append(attrs, a)
	}
	h.l.Log(ctx, lvl, msg, attrs...)
}

// startupElection says a raft warning is the election every node holds
// when it starts without a leader (it has never known one): expected, so
// it logs at info. A heartbeat timeout after a leader was known stays a
// warning.
func startupElection(msg string, args []any) bool {
	if msg != "heartbeat timeout reached, starting election" {
		return false
	}
	for i := 0; i+1 < len(args); i += 2 {
		if args[i] == "last-leader-addr" || args[i] == "last-leader-id" {
			if fmt.Sprint(args[i+1]) != "" {
				return false
			}
		}
	}
	return true
}

// attrValue renders what hclog would render as text and a JSON handler
// could not: hclog.Fmt values, errors and Stringers (raft passes its
// *Raft, whose fields are unexported).
func attrValue(v any) any {
	switch x := v.(type) {
	case nil, string, bool, int, int64, uint64, int32, uint32, float64, time.Duration, time.Time:
		return v
	case hclog.Format:
		if len(x) > 0 {
			if f, ok := x[0].(string); ok {
				return fmt.Sprintf(f, x[1:]...)
			}
		}
		return fmt.Sprint([]any(x)...)
	case error:
		return x.Error()
	case fmt.Stringer:
		return x.String()
	}
	return v
}

func (h *hcLogger) Trace(msg string, args ...any) { h.Log(hclog.Trace, msg, args...) }
func (h *hcLogger) Debug(msg string, args ...any) { h.Log(hclog.Debug, msg, args...) }
func (h *hcLogger) Info(msg string, args ...any)  { h.Log(hclog.Info, msg, args...) }
func (h *hcLogger) Warn(msg string, args ...any)  { h.Log(hclog.Warn, msg, args...) }
func (h *hcLogger) Error(msg string, args ...any) { h.Log(hclog.Error, msg, args...) }

func (h *hcLogger) enabled(l hclog.Level) bool {
	return h.l.Enabled(context.Background(), hcLevel(l))
}

func (h *hcLogger) IsTrace() bool { return h.enabled(hclog.Trace) }
func (h *hcLogger) IsDebug() bool { return h.enabled(hclog.Debug) }
func (h *hcLogger) IsInfo() bool  { return h.enabled(hclog.Info) }
func (h *hcLogger) IsWarn() bool  { return h.enabled(hclog.Warn) }
func (h *hcLogger) IsError() bool { return h.enabled(hclog.Error) }

func (h *hcLogger) ImpliedArgs() []any { return h.implied }

func (h *hcLogger) With(args ...any) hclog.Logger {
	c := *h
	c.l = h.l.With(args...)
	c.implied = append(append([]any(nil), h.implied...), args...)
	return &c
}

func (h *hcLogger) Name() string { return h.name }

func (h *hcLogger) Named(name string) hclog.Logger {
	c := *h
	if h.name != "" {
		c.name = h.name + "." + name
	} else {
		c.name = name
	}
	return &c
}

func (h *hcLogger) ResetNamed(name string) hclog.Logger {
	c := *h
	c.name = name
	return &c
}

// SetLevel does nothing: the slog handler decides.
func (h *hcLogger) SetLevel(hclog.Level) {}

// GetLevel returns the lowest level this logger would log.
func (h *hcLogger) GetLevel() hclog.Level {
	for _, l := range []hclog.Level{hclog.Trace, hclog.Debug, hclog.Info, hclog.Warn, hclog.Error} {
		if h.enabled(l) {
			return l
		}
	}
	return hclog.Off
}

func (h *hcLogger) StandardLogger(opts *hclog.StandardLoggerOptions) *log.Logger {
	return log.New(h.StandardWriter(opts), "", 0)
}

// StandardWriter parses "[LEVEL] name: message" lines like StdLogger;
// a line without a level logs at opts.ForceLevel, else as chatter
// (debug).
func (h *hcLogger) StandardWriter(opts *hclog.StandardLoggerOptions) io.Writer {
	w := &stdWriter{l: h.l, component: h.name, untagged: slog.LevelDebug}
	if opts != nil && opts.ForceLevel != hclog.NoLevel {
		w.untagged = hcLevel(opts.ForceLevel)
	}
	return w
}
