package structs

import "time"

// ClusterSecrets are what a cluster's servers share to secure it: the
// cluster CA (certificate and key, PEM), the join secrets of agents and
// of servers, and the gossip encryption key. They live in raft
// and its snapshots: whoever reads a server's data dir holds the cluster.
type ClusterSecrets struct {
	CACert     string `json:"ca_cert"`
	CAKey      string `json:"ca_key"`
	JoinSecret string `json:"join_secret"`
	// ServerSecret lets another server join and get all of these: it is
	// a different secret from the agents' so that an agent's token does
	// not hand out the CA key.
	ServerSecret string    `json:"server_secret,omitempty"`
	GossipKey    string    `json:"gossip_key"`
	Created      time.Time `json:"created"`
}

// IssuedCert is a node certificate signed by the cluster CA.
type IssuedCert struct {
	// Serial is the certificate's serial number in hex.
	Serial    string    `json:"serial"`
	Role      string    `json:"role"`
	AgentID   string    `json:"agent_id,omitempty"`
	Node      string    `json:"node"`
	NotAfter  time.Time `json:"not_after"`
	Issued    time.Time `json:"issued"`
	Revoked   bool      `json:"revoked,omitempty"`
	RevokedAt time.Time `json:"revoked_at,omitzero"`
}
