package kernelssh

import (
	"context"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// Backoff of the barrier's attempts per peer.
const (
	barrierFirstDelay = 100 * time.Millisecond
	barrierMaxDelay   = 2 * time.Second
	// barrierDialTimeout bounds one attempt (connect and handshake).
	barrierDialTimeout = 10 * time.Second
)

// WaitForPeers returns once every peer's ssh server (this kernel's
// included) has accepted an authenticated connection with the session
// key and this kernel's check-in (BarrierRequest), or with ctx's error. It retries each peer forever with backoff:
// the server ends the session when a peer fails to start. logf gets one
// line per peer that was not up at the first attempt, and one when it
// comes up.
func WaitForPeers(ctx context.Context, l *Launch, signer ssh.Signer, logf func(format string, args ...any)) error {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	var wg sync.WaitGroup
	for _, p := range l.Peers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			waitForPeer(ctx, l, p, signer, logf)
		}()
	}
	wg.Wait()
	return ctx.Err()
}

func waitForPeer(ctx context.Context, l *Launch, p Peer, signer ssh.Signer, logf func(string, ...any)) {
	addr := l.PeerAddr(p.Hostname, 0)
	delay := barrierFirstDelay
	waited := false
	for {
		c, err := Dial(ctx, signer, addr, barrierDialTimeout)
		if err == nil {
			// Check in: the peer keeps its server up after its command
			// until every peer has (Server.WaitCheckedIn).
			_, _, err = c.SendRequest(BarrierRequest, true, []byte(l.Hostname))
			c.Close()
		}
		if err == nil {
			if waited {
				logf("corral-kernel: peer %s (rank %d) at %s is up", p.Hostname, p.Rank, addr)
			}
			return
		}
		if ctx.Err() != nil {
			return
		}
		if !waited {
			logf("corral-kernel: waiting for peer %s (rank %d) at %s: %v", p.Hostname, p.Rank, addr, err)
			waited = true
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		delay = min(delay*2, barrierMaxDelay)
	}
}
