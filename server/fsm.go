package server

import (
	"encoding/json"
	"io"
	"log/slog"
	"sync/atomic"

	"github.com/hashicorp/raft"

	"github.com/corral-dev/corral/server/state"
	"github.com/corral-dev/corral/structs"
)

// fsm applies committed raft log entries to the state store. Every entry is
// one MessageType byte followed by the request as JSON.
type fsm struct {
	state  *state.StateStore
	logger *slog.Logger
	// applied is the index of the last entry the FSM has applied (raft's
	// own AppliedIndex runs ahead of the FSM while entries sit in its queue).
	applied atomic.Uint64
	// restored, when set, is told the state index after a Restore (the
	// event stream starts over there).
	restored func(index uint64)
}

var _ raft.FSM = (*fsm)(nil)

// encodeCommand frames a request for the raft log.
func encodeCommand(t structs.MessageType, req any) ([]byte, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	return append([]byte{byte(t)}, body...), nil
}

// Apply applies one committed entry. It returns an error value (not a
// panic) for requests the state refuses, so the caller can report it.
func (f *fsm) Apply(l *raft.Log) any {
	defer f.applied.Store(l.Index)
	if l.Type != raft.LogCommand || len(l.Data) == 0 {
		return nil
	}
	t, ignorable := entryType(l.Data[0])
	body := l.Data[1:]
	switch t {
	case structs.SessionEnqueueRequestType:
		var req structs.SessionEnqueueRequest
		if err := json.Unmarshal(body, &req); err != nil {
			return err
		}
		return f.state.EnqueueSession(l.Index, &req)
	case structs.PlanApplyRequestType:
		var req structs.PlanApplyRequest
		if err := json.Unmarshal(body, &req); err != nil {
			return err
		}
		res, err := f.state.ApplyPlan(l.Index, &req)
		if err != nil {
			return err
		}
		return res
	case structs.KernelUpdateRequestType:
		var req structs.KernelUpdateRequest
		if err := json.Unmarshal(body, &req); err != nil {
			return err
		}
		skipped, err := f.state.UpdateKernels(l.Index, &req)
		if err != nil {
			return err
		}
		for id, why := range skipped {
			f.logger.Debug("kernel update skipped", "kernel_id", id, "agent_id", req.AgentID, "reason", why)
		}
		return skipped
	case structs.AgentUpsertRequestType:
		var req structs.AgentUpsertRequest
		if err := json.Unmarshal(body, &req); err != nil {
			return err
		}
		return f.state.UpsertAgent(l.Index, &req)
	case structs.AgentStatusRequestType:
		var req structs.AgentStatusRequest
		if err := json.Unmarshal(body, &req); err != nil {
			return err
		}
		return f.state.SetAgentStatus(l.Index, &req)
	case structs.SessionDestroyRequestType:
		var req structs.SessionDestroyRequest
		if err := json.Unmarshal(body, &req); err != nil {
			return err
		}
		return f.state.DestroySession(l.Index, &req)
	case structs.ConfigUpsertRequestType:
		var req structs.ConfigUpsertRequest
		if err := json.Unmarshal(body, &req); err != nil {
			return err
		}
		return f.state.UpsertConfig(l.Index, &req)
	case structs.AgentDrainRequestType:
		var req structs.AgentDrainRequest
		if err := json.Unmarshal(body, &req); err != nil {
			return err
		}
		return f.state.DrainAgent(l.Index, &req)
	case structs.KernelsLostRequestType:
		var req structs.KernelsLostRequest
		if err := json.Unmarshal(body, &req); err != nil {
			return err
		}
		return f.state.KernelsLost(l.Index, &req)
	case structs.SessionsGCRequestType:
		var req structs.SessionsGCRequest
		if err := json.Unmarshal(body, &req); err != nil {
			return err
		}
		res, err := f.state.GCSessions(l.Index, &req)
		if err != nil {
			return err
		}
		return res
	case structs.ClusterSecretsRequestType:
		var req structs.ClusterSecretsRequest
		if err := json.Unmarshal(body, &req); err != nil {
			return err
		}
		set, err := f.state.SetClusterSecrets(l.Index, &req)
		if err != nil {
			return err
		}
		return set
	case structs.CertIssueRequestType:
		var req structs.CertIssueRequest
		if err := json.Unmarshal(body, &req); err != nil {
			return err
		}
		return f.state.IssueCert(l.Index, &req)
	case structs.CertRevokeRequestType:
		var req structs.CertRevokeRequest
		if err := json.Unmarshal(body, &req); err != nil {
			return err
		}
		return f.state.RevokeCerts(l.Index, &req)
	case structs.EndpointUpsertRequestType:
		var req structs.EndpointUpsertRequest
		if err := json.Unmarshal(body, &req); err != nil {
			return err
		}
		return f.state.UpsertEndpoint(l.Index, &req)
	case structs.ConfigDeleteRequestType:
		var req structs.ConfigDeleteRequest
		if err := json.Unmarshal(body, &req); err != nil {
			return err
		}
		return f.state.DeleteConfig(l.Index, &req)
	case structs.EndpointDeleteRequestType:
		var req structs.EndpointDeleteRequest
		if err := json.Unmarshal(body, &req); err != nil {
			return err
		}
		return f.state.DeleteEndpoint(l.Index, &req)
	case structs.VolumeUpsertRequestType:
		var req structs.VolumeUpsertRequest
		if err := json.Unmarshal(body, &req); err != nil {
			return err
		}
		return f.state.UpsertVolume(l.Index, &req)
	case structs.VolumeDeleteRequestType:
		var req structs.VolumeDeleteRequest
		if err := json.Unmarshal(body, &req); err != nil {
			return err
		}
		return f.state.DeleteVolume(l.Index, &req)
	case structs.SSHKeysSetRequestType:
		var req structs.SSHKeysSetRequest
		if err := json.Unmarshal(body, &req); err != nil {
			return err
		}
		return f.state.SetSSHKeys(l.Index, &req)
	case structs.TemplateUpsertRequestType:
		var req structs.TemplateUpsertRequest
		if err := json.Unmarshal(body, &req); err != nil {
			return err
		}
		return f.state.UpsertTemplate(l.Index, &req)
	case structs.TemplateDeleteRequestType:
		var req structs.TemplateDeleteRequest
		if err := json.Unmarshal(body, &req); err != nil {
			return err
		}
		return f.state.DeleteTemplate(l.Index, &req)
	}
	// An unknown type means a newer server wrote the log.
	return f.unknownEntry(t, ignorable, l.Index)
}

// Snapshot captures the whole state for raft's snapshot store.
func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	d, err := f.state.Snapshot().Dump()
	if err != nil {
		return nil, err
	}
	return &fsmSnapshot{dump: d}, nil
}

// Restore replaces the state with a snapshot.
func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	d, err := f.decodeDump(rc)
	if err != nil {
		return err
	}
	if err := f.state.Restore(d); err != nil {
		return err
	}
	if f.restored != nil {
		f.restored(f.state.Snapshot().Index(""))
	}
	return nil
}

type fsmSnapshot struct{ dump *state.Dump }

func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := json.NewEncoder(sink).Encode(s.dump); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s *fsmSnapshot) Release() {}
