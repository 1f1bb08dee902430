package logging

import (
	"context"
	"fmt"
	"io"
	"log/slog"

	"github.com/sirupsen/logrus"
)

// RouteLogrus sends the standard logrus logger's entries (libcontainer,
// the runc driver's library, logs through it, also what its container
// init processes forward) to l: "component":"libcontainer" unless the
// entry names one, the entry's fields as attributes. Its INFO lines log
// at debug, like the other libraries'.
func RouteLogrus(l *slog.Logger) {
	logrus.SetOutput(io.Discard)
	logrus.SetFormatter(&logrus.TextFormatter{DisableColors: true, DisableTimestamp: true})
	lvl := logrus.PanicLevel
	for _, c := range []logrus.Level{logrus.ErrorLevel, logrus.WarnLevel, logrus.InfoLevel, logrus.DebugLevel, logrus.TraceLevel} {
		if l.Enabled(context.Background(), logrusLevel(c)) {
			lvl = c
		}
	}
	logrus.SetLevel(lvl)
	logrus.StandardLogger().ReplaceHooks(logrus.LevelHooks{})
	logrus.AddHook(&logrusHook{l: l})
}

// logrusLevel maps a logrus level to the slog level its lines log at.
func logrusLevel(l logrus.Level) slog.Level {
	switch l {
	case logrus.TraceLevel:
		return LevelTrace
	case logrus.DebugLevel, logrus.InfoLevel:
		return slog.LevelDebug
	case logrus.WarnLevel:
		return slog.LevelWarn
	}
	return slog.LevelError // error, fatal, panic
}

type logrusHook struct{ l *slog.Logger }

func (h *logrusHook) Levels() []logrus.Level { return logrus.AllLevels }

func (h *logrusHook) Fire(e *logrus.Entry) error {
	lvl := logrusLevel(e.Level)
	ctx := context.Background()
	if !h.l.Enabled(ctx, lvl) {
		return nil
	}
	attrs := make([]any, 0, 2+2*len(e.Data))
	if _, ok := e.Data["component"]; !ok {
		attrs = append(attrs, "component", "libcontainer")
	}
	for k, v := range e.Data {
		if err, ok := v.(error); ok {
			v = err.Error()
		} else if s, ok := v.(fmt.Stringer); ok {
			v = s.String()
		}
		attrs = append(attrs, k, v)
	}
	h.l.Log(ctx, lvl, e.Message, attrs...)
	return nil
}
