package rpc

import (
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Protocol versions of the agent↔server contract. The skew policy
// (docs/upgrades.md) is one version both ways: a server of version N
// serves agents of N-1, N and N+1, and an agent of version N works with
// servers of N-1, N and N+1. Servers are upgraded first, then agents.
const (
	// ProtocolVersion is the version this binary speaks. Version 1 is the
	// protocol before versions were sent (its messages carry no version
	// field); version 2 adds the version fields to Register and Watch.
	ProtocolVersion = 2
	// MinProtocolVersion is the oldest agent protocol a server accepts.
	MinProtocolVersion = ProtocolVersion - 1
	// MaxProtocolVersion is the newest agent protocol a server accepts:
	// a newer agent promises to speak this server's version, which it
	// learns from RegisterResponse.
	MaxProtocolVersion = ProtocolVersion + 1
)

// EffectiveVersion is the protocol version a peer announced: a message
// without one comes from protocol 1, which sent none.
func EffectiveVersion(v int) int {
	if v == 0 {
		return 1
	}
	return v
}

// CheckAgentVersion is the server's check of an agent's announced version
// (0: none announced). Outside the accepted range it returns a
// FailedPrecondition status that says both versions and which side to
// upgrade.
func CheckAgentVersion(announced int) error {
	v := EffectiveVersion(announced)
	if announced < 0 || v < MinProtocolVersion {
		return status.Errorf(codes.FailedPrecondition,
			"agent speaks protocol %d; this server (protocol %d) accepts %d–%d: upgrade the agent", announced, ProtocolVersion, MinProtocolVersion, MaxProtocolVersion)
	}
	if v > MaxProtocolVersion {
		return status.Errorf(codes.FailedPrecondition,
			"agent speaks protocol %d; this server (protocol %d) accepts %d–%d: upgrade the servers first, then the agents", v, ProtocolVersion, MinProtocolVersion, MaxProtocolVersion)
	}
	return nil
}

// CheckServerVersion is the agent's check of the version a server
// announced in RegisterResponse (0: a protocol 1 server, which announces
// none). An error says which side to upgrade.
func CheckServerVersion(announced int) error {
	v := EffectiveVersion(announced)
	switch {
	case announced < 0 || v < ProtocolVersion-1:
		return fmt.Errorf("server speaks protocol %d; this agent (protocol %d) works with servers of %d–%d: upgrade the servers first", v, ProtocolVersion, ProtocolVersion-1, ProtocolVersion+1)
	case v > ProtocolVersion+1:
		return fmt.Errorf("server speaks protocol %d; this agent (protocol %d) works with servers of %d–%d: upgrade the agent", v, ProtocolVersion, ProtocolVersion-1, ProtocolVersion+1)
	}
	return nil
}
