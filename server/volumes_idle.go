package server

import (
	"context"
	"fmt"
	"time"

	"github.com/corral-dev/corral/structs"
)

// DefaultSFTPIdleTimeout is how long an SFTP system session lives
// without traffic through its tunnel unless Config.SFTPIdleTimeout says.
const DefaultSFTPIdleTimeout = 10 * time.Minute

// sftpSession reports whether sess is an SFTP system session.
func sftpSession(sess *structs.Session) bool {
	if sess.Type != structs.SessionTypeSystem {
		return false
	}
	for _, p := range sess.ServicePorts {
		if p.Name == structs.SFTPPortName {
			return true
		}
	}
	return false
}

// endIdleSFTP (leader) terminates RUNNING SFTP system sessions whose
// tunnel carried nothing for the SFTP idle timeout: app connections
// touch their session when they open, every 10 s while open and when
// they close (http_apps.go), so an open transfer keeps it.
func (s *Server) endIdleSFTP(ctx context.Context) {
	timeout := s.cfg.SFTPIdleTimeout
	if timeout <= 0 {
		timeout = DefaultSFTPIdleTimeout
	}
	t := time.NewTicker(min(lifetimeInterval, timeout/4+time.Second))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		sessions, err := s.state.Snapshot().Sessions(nil, "")
		if err != nil {
			continue
		}
		now := time.Now().UTC()
		for _, sess := range sessions {
			if sess.Status != structs.SessionRunning || !sftpSession(sess) {
				continue
			}
			_, due := idleDecision(idleInput{Now: now, RunningSince: runningSince(sess), LastTouch: s.activity.get(sess.ID), Timeout: timeout})
			if !due {
				continue
			}
			reason := fmt.Sprintf("terminated: SFTP session idle for %s (no traffic through its tunnel)", timeout)
			s.logger.Info("terminating idle sftp session", "session_id", sess.ID)
			if _, _, err := s.apply(structs.SessionDestroyRequestType, &structs.SessionDestroyRequest{SessionID: sess.ID, Reason: reason, Time: now}); err != nil {
				s.logger.Warn("terminating idle sftp session failed", "session_id", sess.ID, "error", err)
			}
		}
	}
}
