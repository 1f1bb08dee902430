package rpc

import (
	"context"

	"github.com/corral-dev/corral/structs"
)

// SignAgentRequest asks a server to sign a certificate for an agent. A
// new agent authenticates with the join secret (over TLS that pins the
// cluster CA by the join token's hash); an agent renewing its certificate
// authenticates with that certificate instead and sends no secret. The
// key stays on the agent: CSR carries only its public half.
type SignAgentRequest struct {
	AgentID string `json:"agent_id"`
	Name    string `json:"name"`
	// CSR is a PEM certificate signing request (tlsutil.NewCSR).
	CSR    []byte `json:"csr"`
	Secret string `json:"secret,omitempty"`
}

// SignAgentResponse is the agent's certificate (PEM), bound to its name
// and ID, the cluster CA certificate (PEM) and the gossip key (base64).
type SignAgentResponse struct {
	Cert      []byte `json:"cert"`
	CACert    []byte `json:"ca_cert"`
	GossipKey string `json:"gossip_key"`
}

// SignAgentMethod is the full name of the one call a client without a
// certificate may make.
const SignAgentMethod = "/" + serverServiceName + "/SignAgent"

// SignAgent asks for an agent certificate.
func (c *ServerClient) SignAgent(ctx context.Context, req *SignAgentRequest) (*SignAgentResponse, error) {
	out := new(SignAgentResponse)
	return out, c.cc.Invoke(ctx, SignAgentMethod, req, out, CallOptions()...)
}

// JoinServerRequest asks a server of a cluster with automatic TLS for the
// cluster's secrets, for a new server of the same cluster: it
// authenticates with the server join secret, over TLS pinned to the CA.
type JoinServerRequest struct {
	Name   string `json:"name"`
	Secret string `json:"secret"`
}

// JoinServerResponse holds the cluster's secrets (the new server signs
// its own certificate with the CA key).
type JoinServerResponse struct {
	Secrets *structs.ClusterSecrets `json:"secrets"`
}

// JoinServerMethod is the full name of JoinServer, which a client without
// a certificate may call too.
const JoinServerMethod = "/" + serverServiceName + "/JoinServer"

// JoinServer asks for the cluster's secrets.
func (c *ServerClient) JoinServer(ctx context.Context, req *JoinServerRequest) (*JoinServerResponse, error) {
	out := new(JoinServerResponse)
	return out, c.cc.Invoke(ctx, JoinServerMethod, req, out, CallOptions()...)
}
