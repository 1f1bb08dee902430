package agent

import (
	"errors"
	"log/slog"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestReconnectLevel: a server without a raft leader yet (or not yet
// listening) while the cluster starts is logged at debug level, not as
// the "no raft leader yet" warnings `make run` used to print.
func TestReconnectLevel(t *testing.T) {
	noLeader := status.Error(codes.Unavailable, "no raft leader yet: this server is not the raft leader")
	for _, tc := range []struct {
		name  string
		err   error
		since time.Duration
		want  slog.Level
	}{
		{"no leader at start", noLeader, time.Second, slog.LevelDebug},
		{"no leader after the grace", noLeader, startupGrace + time.Second, slog.LevelWarn},
		{"other error at start", status.Error(codes.Internal, "boom"), time.Second, slog.LevelWarn},
		{"plain error at start", errors.New("stream broke"), time.Second, slog.LevelWarn},
	} {
		if got := reconnectLevel(tc.err, tc.since); got != tc.want {
			t.Errorf("%s: level %s, want %s", tc.name, got, tc.want)
		}
	}
}
