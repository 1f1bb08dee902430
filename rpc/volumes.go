package rpc

import "context"

// VolumeUsageRequest asks an agent how much its volume directories hold
// (a du of each, below the root of its backend).
type VolumeUsageRequest struct {
	Volumes []VolumeDir `json:"volumes"`
}

// VolumeDir locates one volume: Dir below the root of Backend.
type VolumeDir struct {
	Backend string `json:"backend"`
	Dir     string `json:"dir"`
	// QuotaBytes is the volume's quota (0: none), set where the
	// filesystem can hold it.
	QuotaBytes int64 `json:"quota_bytes,omitempty"`
}

// VolumeUsage is one volume's measured size, or why there is none.
type VolumeUsage struct {
	Backend string `json:"backend"`
	Dir     string `json:"dir"`
	Bytes   int64  `json:"bytes"`
	Files   int64  `json:"files"`
	// Quota says how a quota holds: "enforced" (a btrfs qgroup limit)
	// or "measured"; "" without a quota.
	Quota string `json:"quota,omitempty"`
	Error string `json:"error,omitempty"`
}

// VolumeUsageResponse answers a VolumeUsageRequest, one entry per volume.
type VolumeUsageResponse struct {
	Volumes []VolumeUsage `json:"volumes"`
}

// VolumeUsage measures volume directories on the agent.
func (c *AgentClient) VolumeUsage(ctx context.Context, req *VolumeUsageRequest) (*VolumeUsageResponse, error) {
	out := new(VolumeUsageResponse)
	return out, c.cc.Invoke(ctx, "/"+agentServiceName+"/VolumeUsage", req, out, CallOptions()...)
}
