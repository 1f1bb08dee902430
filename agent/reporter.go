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
	pending []queuedUpdate
	wake    chan struct{}
}

// queuedUpdate is one status change waiting for delivery; delivered, if
// set, runs once a server has accepted it.
type queuedUpdate struct {
	update    *structs.KernelUpdate
	delivered func()
}

func newReporter(a *Agent) *reporter {
	return &reporter{a: a, wake: make(chan struct{}, 1)}
}

// report queues one status change.
func (r *reporter) report(kernelID string, status structs.KernelStatus, info string, exitCode *int) {
	r.reportUpdate(newUpdate(kernelID, status, info, exitCode), nil)
}

func newUpdate(kernelID string, status structs.KernelStatus, info string, exitCode *int) *structs.KernelUpdate {
	return &structs.KernelUpdate{KernelID: kernelID, Status: status, Info: info, ExitCode: exitCode, Time: time.Now().UTC()}
}

// reportUpdate queues an update and a callback for when a server accepted it.
func (r *reporter) reportUpdate(u *structs.KernelUpdate, delivered func()) {
	r.mu.Lock()
	r.pending = append(r.pending, queuedUpdate{update: u, delivered: delivered})
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
				r.a.logger.Log(ctx, reconnectLevel(err, time.Since(r.a.started)), "reporting kernel status failed, will retry", "updates", len(batch), "error", err)
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
			for _, q := range batch {
				if q.delivered != nil {
					q.delivered()
				}
			}
		}
	}
}

func (r *reporter) send(ctx context.Context, queued []queuedUpdate) error {
	conn, err := r.a.currentConn(ctx)
	if err != nil {
		return err
	}
	batch := make([]*structs.KernelUpdate, len(queued))
	for i, q := range queued {
		batch[i] = q.update
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
