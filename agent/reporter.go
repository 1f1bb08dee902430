package agent

import (
	"context"
	"sync"
	"time"

	"github.com/corral-dev/corral/structs"
)

// reporter batches kernel status changes and delivers them to a server,
// retrying until one accepts them: nothing observed is lost while the
// server is away.
type reporter struct {
	a       *Agent
	mu      sync.Mutex
	pending []*structs.KernelUpdate
	wake    chan struct{}
}

func newReporter(a *Agent) *reporter {
	return &reporter{a: a, wake: make(chan struct{}, 1)}
}

// report queues one status change.
func (r *reporter) report(kernelID string, status structs.KernelStatus, info string, exitCode *int) {
	r.mu.Lock()
	r.pending = append(r.pending, &structs.KernelUpdate{KernelID: kernelID, Status: status, Info: info, ExitCode: exitCode, Time: time.Now().UTC()})
	r.mu.Unlock()
	r.kick()
}

func (r *reporter) kick() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

func (r *reporter) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.wake:
		}
		for {
			r.mu.Lock()
			batch := r.pending
			r.mu.Unlock()
			if len(batch) == 0 {
				break
			}
			if err := r.send(ctx, batch); err != nil {
				if ctx.Err() != nil {
					return
				}
				r.a.logger.Warn("reporting kernel status failed, will retry", "updates", len(batch), "error", err)
				select {
				case <-ctx.Done():
					return
				case <-time.After(200 * time.Millisecond):
				}
				continue
			}
			r.mu.Lock()
			r.pending = r.pending[len(batch):]
			r.mu.Unlock()
		}
	}
}

func (r *reporter) send(ctx context.Context, batch []*structs.KernelUpdate) error {
	conn, err := r.a.currentConn(ctx)
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	resp, err := conn.client.UpdateKernels(cctx, &structs.KernelUpdateRequest{AgentID: r.a.id, Updates: batch})
	if err != nil {
		return err
	}
	for id, why := range resp.Skipped {
		r.a.logger.Debug("server skipped a kernel update", "kernel_id", id, "reason", why)
	}
	return nil
}
