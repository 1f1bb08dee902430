package loader

import (
	"context"
	"io"
	"log"
	"log/slog"
	"strings"

	"github.com/hashicorp/go-hclog"
)

// hclogger adapts an slog.Logger to the hclog.Logger that go-plugin wants.
// go-plugin's own chatter (process started, exited, killed) goes to Debug:
// the loader logs what matters itself, once. The log lines of the plugin
// process, which go-plugin forwards through a logger named after the plugin
// binary, keep their levels.
type hclogger struct {
	l       *slog.Logger
	name    string
	implied []any
	// pluginBase is the base name of the plugin binary: Named(pluginBase)
	// is the logger of the plugin's own log lines.
	pluginBase string
	// forwarded says this logger carries the plugin's own log lines.
	forwarded bool
}

var _ hclog.Logger = (*hclogger)(nil)

func newHCLogger(l *slog.Logger, pluginBase string) *hclogger {
	return &hclogger{l: l, pluginBase: pluginBase}
}

// slogLevel maps an hclog level to slog; Trace is below Debug.
func slogLevel(l hclog.Level) slog.Level {
	switch l {
	case hclog.Trace:
		return slog.LevelDebug - 4
	case hclog.Debug:
		return slog.LevelDebug
	case hclog.Warn:
		return slog.LevelWarn
	case hclog.Error:
		return slog.LevelError
	default:
		return slog.LevelInfo
	}
}

// level returns the slog level a message of level l is logged at.
func (h *hclogger) level(l hclog.Level) slog.Level {
	lvl := slogLevel(l)
	if !h.forwarded && lvl > slog.LevelDebug {
		lvl = slog.LevelDebug
	}
	return lvl
}

func (h *hclogger) Log(level hclog.Level, msg string, args ...any) {
	if level == hclog.Off {
		return
	}
	lvl := h.level(level)
	ctx := context.Background()
	if !h.l.Enabled(ctx, lvl) {
		return
	}
	if h.name != "" && !h.forwarded {
		msg = h.name + ": " + msg
	}
	h.l.Log(ctx, lvl, msg, h.filter(args)...)
}

// filter drops the key-value pairs that would repeat what the slog logger
// already says: go-plugin's "plugin" (the loader's logger has it) and, on
// the plugin's own lines, the "timestamp" go-plugin adds.
func (h *hclogger) filter(args []any) []any {
	out := args[:0:0]
	for i := 0; i < len(args); i += 2 {
		if i+1 < len(args) {
			if k, ok := args[i].(string); ok && (k == "plugin" || h.forwarded && k == "timestamp") {
				continue
			}
			out = append(out, args[i], args[i+1])
			continue
		}
		out = append(out, args[i])
	}
	return out
}

func (h *hclogger) Trace(msg string, args ...any) { h.Log(hclog.Trace, msg, args...) }
func (h *hclogger) Debug(msg string, args ...any) { h.Log(hclog.Debug, msg, args...) }
func (h *hclogger) Info(msg string, args ...any)  { h.Log(hclog.Info, msg, args...) }
func (h *hclogger) Warn(msg string, args ...any)  { h.Log(hclog.Warn, msg, args...) }
func (h *hclogger) Error(msg string, args ...any) { h.Log(hclog.Error, msg, args...) }

func (h *hclogger) enabled(l hclog.Level) bool {
	return h.l.Enabled(context.Background(), h.level(l))
}

func (h *hclogger) IsTrace() bool { return h.enabled(hclog.Trace) }
func (h *hclogger) IsDebug() bool { return h.enabled(hclog.Debug) }
func (h *hclogger) IsInfo() bool  { return h.enabled(hclog.Info) }
func (h *hclogger) IsWarn() bool  { return h.enabled(hclog.Warn) }
func (h *hclogger) IsError() bool { return h.enabled(hclog.Error) }

func (h *hclogger) ImpliedArgs() []any { return h.implied }

func (h *hclogger) With(args ...any) hclog.Logger {
	c := *h
	c.l = h.l.With(args...)
	c.implied = append(append([]any(nil), h.implied...), args...)
	return &c
}

func (h *hclogger) Name() string { return h.name }

func (h *hclogger) Named(name string) hclog.Logger {
	c := *h
	if h.name != "" {
		c.name = h.name + "." + name
	} else {
		c.name = name
	}
	c.forwarded = h.forwarded || name == h.pluginBase
	return &c
}

func (h *hclogger) ResetNamed(name string) hclog.Logger {
	c := *h
	c.name = name
	c.forwarded = name == h.pluginBase
	return &c
}

// SetLevel does nothing: the slog handler decides.
func (h *hclogger) SetLevel(hclog.Level) {}

// GetLevel returns the lowest level this logger would log.
func (h *hclogger) GetLevel() hclog.Level {
	for _, l := range []hclog.Level{hclog.Trace, hclog.Debug, hclog.Info, hclog.Warn, hclog.Error} {
		if h.enabled(l) {
			return l
		}
	}
	return hclog.Off
}

func (h *hclogger) StandardLogger(opts *hclog.StandardLoggerOptions) *log.Logger {
	return log.New(h.StandardWriter(opts), "", 0)
}

func (h *hclogger) StandardWriter(opts *hclog.StandardLoggerOptions) io.Writer {
	level := hclog.Info
	if opts != nil && opts.ForceLevel != hclog.NoLevel {
		level = opts.ForceLevel
	}
	return stdWriter{h: h, level: level}
}

// stdWriter logs each write as one message.
type stdWriter struct {
	h     *hclogger
	level hclog.Level
}

func (w stdWriter) Write(p []byte) (int, error) {
	w.h.Log(w.level, strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
