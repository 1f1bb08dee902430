# /etc/corral/agent.hcl: options of `corral agent -config /etc/corral/agent.hcl`
# (the corral-agent systemd unit). Every option is a flag of
# `corral agent -h` without its dash, '-' written '_'; flags on the command
# line and the environment (/etc/default/corral) override this file.
# Reference: /usr/share/doc/corral/configuration.md

data_dir = "/var/lib/corral/agent"

# This node's addresses for gRPC (servers call in for exec and logs) and
# gossip: bind them to the node's cluster address.
rpc  = "127.0.0.1:8644"
serf = "127.0.0.1:8643"

# Any server's (or agent's) gossip address; the join token goes into
# /etc/default/corral as CORRAL_JOIN_TOKEN=... (from `corral system join-token`).
join = ["127.0.0.1:8642"]

# Which agents a session may land on: sessions name a resource group.
resource_group = "default"

# Capacity: fingerprinted (CPU cores, memory, NVIDIA GPUs through NVML);
# set these to keep some for the host.
#   cpu = 30
#   mem = "120G"
#   no_gpus = true

# Kernels' network: a NAT bridge in this subnet; egress may be restricted.
kernel_subnet = "10.88.0.0/16"
#   kernel_egress_allow = ["10.0.0.0/8"]

# Images: registries at private addresses must be named.
#   allow_registry    = ["registry.internal:5000"]
#   insecure_registry = ["registry.internal:5000"]
max_image_size = "50G"

# External driver plugins (executables launched through go-plugin).
#   plugin_dir = "/usr/lib/corral/plugins"

log_level  = "info"
log_format = "text" # or "json"
