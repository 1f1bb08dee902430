// Package logging is the one log format of a corral daemon: an slog
// logger in text or JSON, and adapters that route the libraries' loggers
// through it (raft's and go-plugin's hclog, serf's and memberlist's
// standard *log.Logger, gRPC's grpclog), so that stderr carries one
// format only.
//
// Levels map one to one, except that the libraries' INFO lines log at
// debug: they are the libraries' chatter (raft's "entering follower
// state", serf's "EventMemberJoin"), and corral logs what they mean
// itself ("acquired leadership", "agent joined").
package logging

import (
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"strings"
)

// Formats are the values of -log-format.
var Formats = []string{"text", "json"}

// LevelTrace is the level of the libraries' TRACE lines: below debug,
// so that -log-level debug does not show them.
const LevelTrace = slog.LevelDebug - 4

// New returns a logger that writes to w at the given level (debug, info,
// warn or error) in the given format (text or json).
func New(w io.Writer, level, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("invalid log level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case "", "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("invalid log format %q: want text or json", format)
}

// libLevel maps a library's level name (TRACE, DEBUG, INFO, WARN, ERR,
// ERROR, in any case) to the slog level its lines log at.
func libLevel(name string) (slog.Level, bool) {
	switch strings.ToUpper(name) {
	case "TRACE":
		return LevelTrace, true
	case "DEBUG":
		return slog.LevelDebug, true
	case "INFO":
		return slog.LevelDebug, true
	case "WARN", "WARNING":
		return slog.LevelWarn, true
	case "ERR", "ERROR":
		return slog.LevelError, true
	}
	return 0, false
}

// StdLogger returns a standard logger for serf and memberlist: each line
// they write ("[WARN] memberlist: message") becomes one record of l at
// the mapped level, with the library in the "component" key (component
// when the line names none).
func StdLogger(l *slog.Logger, component string) *log.Logger {
	return log.New(&stdWriter{l: l, component: component, untagged: slog.LevelDebug}, "", 0)
}

type stdWriter struct {
	l         *slog.Logger
	component string
	// untagged is the level of a line that names none.
	untagged slog.Level
}

func (w *stdWriter) Write(p []byte) (int, error) {
	for _, line := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
		if line = strings.TrimSpace(line); line != "" {
			w.log(line)
		}
	}
	return len(p), nil
}

func (w *stdWriter) log(line string) {
	lvl := w.untagged
	if strings.HasPrefix(line, "[") {
		if end := strings.IndexByte(line, ']'); end > 0 {
			if v, ok := libLevel(line[1:end]); ok {
				lvl = v
				line = strings.TrimSpace(line[end+1:])
			}
		}
	}
	ctx := context.Background()
	if !w.l.Enabled(ctx, lvl) {
		return
	}
	component := w.component
	if i := strings.Index(line, ": "); i > 0 && isWord(line[:i]) {
		component, line = line[:i], line[i+2:]
	}
	if lvl > slog.LevelDebug && expected[component+": "+line] {
		lvl = slog.LevelDebug
		if !w.l.Enabled(ctx, lvl) {
			return
		}
	}
	w.l.Log(ctx, lvl, line, "component", component)
}

// expected are the libraries' warnings about what corral does on
// purpose: they log at debug. An agent that stops does not leave the
// gossip pool (its kernels run on; it rejoins when it starts again).
var expected = map[string]bool{
	"serf: Shutdown without a Leave": true,
}

// isWord says s is a library's name such as "memberlist" or "serf".
func isWord(s string) bool {
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return false
		}
	}
	return s != ""
}
