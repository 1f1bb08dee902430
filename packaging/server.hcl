# /etc/corral/server.hcl: options of `corral server -config /etc/corral/server.hcl`
# (the corral-server systemd unit). Every option is a flag of
# `corral server -h` without its dash, '-' written '_'; flags on the command
# line and the environment (/etc/default/corral) override this file.
# Reference: /usr/share/doc/corral/configuration.md

data_dir = "/var/lib/corral/server"

# Addresses: the HTTP API (CLI, dashboard, metrics), gRPC + raft (agents
# and the other servers) and gossip. Bind them to this host's cluster
# address (127.0.0.1 keeps a server to itself).
http = "127.0.0.1:8640"
rpc  = "127.0.0.1:8641"
serf = "127.0.0.1:8642"

# One server, or 3 (or 5) for a quorum that survives losing one (two).
# Servers 2 and 3 also set join and the servers' token the first printed:
#   join       = ["10.0.0.11:8642"]
#   join_token = "..."   (better: CORRAL_JOIN_TOKEN in /etc/default/corral)
bootstrap_expect = 1

# Automatic TLS is on: the first server creates the cluster CA, gossip key
# and join secrets; agents join with the token it prints
# (`corral system join-token` shows it again).

log_level  = "info"
log_format = "text" # or "json": one object a line, for log shippers

# How long an agent may be out of touch (no gossip, no heartbeat) before
# its kernels are given up.
agent_lost_after = "5m"

# How long ended sessions stay listed before they are collected.
gc_retention = "24h"
