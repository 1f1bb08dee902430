package logging

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"google.golang.org/grpc/grpclog"
)

// GRPCLogger returns a grpclog.LoggerV2 that logs through l, for
// grpclog.SetLoggerV2 (call it before any gRPC activity). gRPC's own
// default shows only errors: its INFO lines log at trace level, its
// WARNING lines (connection attempts refused while a peer restarts) at
// debug, its errors at error.
func GRPCLogger(l *slog.Logger) grpclog.LoggerV2 { return &grpcLogger{l: l} }

type grpcLogger struct{ l *slog.Logger }

func (g *grpcLogger) log(lvl slog.Level, msg string) {
	ctx := context.Background()
	if !g.l.Enabled(ctx, lvl) {
		return
	}
	component := "grpc"
	// gRPC's component loggers prefix "[core] ", "[transport] "...
	if strings.HasPrefix(msg, "[") {
		if end := strings.IndexByte(msg, ']'); end > 1 && isWord(msg[1:end]) {
			component += "." + msg[1:end]
			msg = strings.TrimSpace(msg[end+1:])
		}
	}
	g.l.Log(ctx, lvl, strings.TrimRight(msg, "\n"), "component", component)
}

func (g *grpcLogger) Info(args ...any)   { g.log(LevelTrace, fmt.Sprint(args...)) }
func (g *grpcLogger) Infoln(args ...any) { g.log(LevelTrace, fmt.Sprintln(args...)) }
func (g *grpcLogger) Infof(format string, args ...any) {
	g.log(LevelTrace, fmt.Sprintf(format, args...))
}
func (g *grpcLogger) Warning(args ...any)   { g.log(slog.LevelDebug, fmt.Sprint(args...)) }
func (g *grpcLogger) Warningln(args ...any) { g.log(slog.LevelDebug, fmt.Sprintln(args...)) }
func (g *grpcLogger) Warningf(format string, args ...any) {
	g.log(slog.LevelDebug, fmt.Sprintf(format, args...))
}
func (g *grpcLogger) Error(args ...any)   { g.log(slog.LevelError, fmt.Sprint(args...)) }
func (g *grpcLogger) Errorln(args ...any) { g.log(slog.LevelError, fmt.Sprintln(args...)) }
func (g *grpcLogger) Errorf(format string, args ...any) {
	g.log(slog.LevelError, fmt.Sprintf(format, args...))
}
func (g *grpcLogger) Fatal(args ...any)   { g.log(slog.LevelError, fmt.Sprint(args...)); os.Exit(1) }
func (g *grpcLogger) Fatalln(args ...any) { g.log(slog.LevelError, fmt.Sprintln(args...)); os.Exit(1) }
func (g *grpcLogger) Fatalf(format string, args ...any) {
	g.log(slog.LevelError, fmt.Sprintf(format, args...))
	os.Exit(1)
}

// V reports whether verbosity level v is on: only at trace level.
func (g *grpcLogger) V(v int) bool {
	return v <= 0 && g.l.Enabled(context.Background(), LevelTrace)
}
