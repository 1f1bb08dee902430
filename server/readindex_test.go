package server_test

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	grpcstatus "google.golang.org/grpc/status"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/rpc"
	"github.com/corral-dev/corral/rpc/tlsutil"
	"github.com/corral-dev/corral/server"
)

// freeAddr reserves a loopback port for a server that restarts on it.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestRestartedFollowerCatchesUpBeforeWatch: a follower that was down
// while the log grew restarts on its old data dir; an agent watching it
// at once gets its first kernel list only once the follower's state has
// caught up with what the leader had when the watch began, never the
// stale state on the follower's disk.
func TestRestartedFollowerCatchesUpBeforeWatch(t *testing.T) {
	var mu sync.Mutex
	cfgs := map[string]server.Config{}
	srvs, token := startQuorumCfg(t, 3, func(c *server.Config) {
		c.RPCAddr, c.SerfAddr = freeAddr(t), freeAddr(t)
		// The test watches as a plaintext client.
		c.Insecure = true
		mu.Lock()
		cfgs[c.NodeName] = *c
		mu.Unlock()
	})
	leader := -1
	for i, s := range srvs {
		if s.IsLeader() {
			leader = i
		}
	}
	if leader < 0 {
		t.Fatal("no leader")
	}
	follower := (leader + 1) % 3
	name := fmt.Sprintf("server%d", follower)
	srvs[follower].Shutdown()

	// The log grows while the follower is down.
	c := apiClient(t, srvs[leader].HTTPAddr(), token)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 25 {
				req := &api.CreateSessionRequest{Name: fmt.Sprintf("s-%d-%d", w, i), Type: "batch", Command: []string{"true"}, Resources: small}
				if _, err := c.CreateSession(context.Background(), req); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	cfg := cfgs[name]
	cfg.Join = []string{srvs[leader].SerfAddr()}
	back, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = back.Serve() }()
	t.Cleanup(back.Shutdown)

	want := srvs[leader].State().Snapshot().Index("")
	cc, err := grpc.NewClient(back.RPCAddr(), (*rpc.Security)(nil).DialOptions(tlsutil.RoleServer)...)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	cl := rpc.NewServerClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		stream, err := cl.WatchKernels(ctx, &rpc.WatchRequest{AgentID: "agent-1"})
		if err == nil {
			var msg *rpc.WatchResponse
			msg, err = stream.Recv()
			if err == nil {
				if !msg.Full {
					t.Fatal("first message of a watch is not a full list")
				}
				if got := back.State().Snapshot().Index(""); got < want {
					t.Fatalf("restarted follower served a full list at state index %d; the leader was at %d when the watch began", got, want)
				}
				return
			}
		}
		// Unavailable (no leader heard from yet, still behind): an agent
		// would try again.
		if grpcstatus.Code(err) != codes.Unavailable || ctx.Err() != nil {
			t.Fatalf("watch on the restarted follower: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
