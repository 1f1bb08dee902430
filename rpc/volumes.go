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
}

// VolumeUsage is one volume's measured size, or why there is none.
type VolumeUsage struct {
	Backend string `json:"backend"`
	Dir     string `json:"dir"`
	Bytes   int64  `json:"bytes"`
	Files   int64  `json:"files"`
	Error   string `json:"error,omitempty"`
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
