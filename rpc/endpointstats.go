package rpc

import "context"

// EndpointStatsRequest carries one server's router counters to the
// leader, whose autoscaler sums them over all servers (every server
// routes endpoint requests itself; only the leader scales).
type EndpointStatsRequest struct {
	// Server is the reporting server's raft ID.
	Server string `json:"server"`
	// Endpoints maps endpoint names to the server's counters.
	Endpoints map[string]EndpointCounters `json:"endpoints"`
}

// EndpointCounters are one server's monotonic counters of one endpoint's
// routed requests since the server started.
type EndpointCounters struct {
	// Requests counts the requests routed.
	Requests uint64 `json:"requests"`
	// InFlightNanos is the integral of the requests in flight over time
	// (request-nanoseconds): its rate is the mean concurrency.
	InFlightNanos uint64 `json:"in_flight_nanos"`
}

// EndpointStatsResponse acknowledges a report.
type EndpointStatsResponse struct {
	// Leader names the server that took the report.
	Leader string `json:"leader,omitempty"`
}

// EndpointStats reports a follower's router counters to the leader.
func (c *ServerClient) EndpointStats(ctx context.Context, req *EndpointStatsRequest) (*EndpointStatsResponse, error) {
	out := new(EndpointStatsResponse)
	return out, c.cc.Invoke(ctx, "/"+serverServiceName+"/EndpointStats", req, out, CallOptions()...)
}
