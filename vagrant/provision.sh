#!/bin/sh
# Provisions a node of the Vagrant cluster (see ../Vagrantfile and
# docs/vagrant.md): installs the .deb that `make dist` built on the host
# and configures and starts corral-server or corral-agent.
#
#   provision.sh server|agent NAME IP SERVER_IPS
#
# SERVER_IPS is the comma-separated list of the servers' addresses; the
# first of them is the first server, which creates the cluster (its CA,
# gossip key and join secrets: automatic TLS). The others, and the agents,
# join with the tokens the host fetched from it into
# /vagrant/vagrant/secrets/tokens.env (Vagrantfile triggers).
set -eu
role=$1 name=$2 ip=$3 servers=$4
secrets=/vagrant/vagrant/secrets/tokens.env
state=/var/lib/corral/vagrant
export DEBIAN_FRONTEND=noninteractive

say() { echo "corral-vagrant[$name]: $*"; }
die() { echo "corral-vagrant[$name]: $*" >&2; exit 1; }

deb=$(ls -t /vagrant/dist/corral_*_amd64.deb 2>/dev/null | head -n 1 || true)
[ -n "$deb" ] || die "no /vagrant/dist/corral_*_amd64.deb: run 'make dist' on the host, then 'vagrant reload --provision'"
say "installing $deb"
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends -o Dpkg::Options::=--force-confold "$deb" iproute2 ca-certificates >/dev/null

# join: the gossip addresses of the servers other than this node, as HCL.
join=""
n=0
for s in $(echo "$servers" | tr ',' ' '); do
	n=$((n + 1))
	[ "$s" = "$ip" ] && continue
	join="$join${join:+, }\"$s:8642\""
done
first=${servers%%,*}

# token NAME: a value of the tokens the host fetched from the first server.
token() {
	[ -r "$secrets" ] || die "no $secrets: bring the first server up first ('vagrant up' does, in order)"
	v=$(sed -n "s/^$1=//p" "$secrets" | tail -n 1)
	[ -n "$v" ] || die "no $1 in $secrets yet: 'vagrant up' the servers first"
	echo "$v"
}

install -d -m 0700 "$state"
case $role in
server)
	cat >/etc/corral/server.hcl <<CONF
# Written by vagrant/provision.sh: server $name of a $n-server cluster.
data_dir         = "/var/lib/corral/server"
name             = "$name"
http             = "$ip:8640"
rpc              = "$ip:8641"
serf             = "$ip:8642"
bootstrap_expect = $n
join             = [$join]
log_level        = "info"
log_format       = "text"
CONF
	if [ "$ip" != "$first" ]; then
		# Servers 2, 3: the servers' token of the first (it hands them
		# the cluster's CA and keys on their first start).
		echo "CORRAL_JOIN_TOKEN=$(token SERVER_JOIN_TOKEN)" >/etc/default/corral
		chmod 0600 /etc/default/corral
	fi
	echo "export CORRAL_ADDR=http://$ip:8640" >/etc/profile.d/corral.sh
	systemctl enable corral-server >/dev/null 2>&1
	systemctl restart corral-server
	if [ "$ip" = "$first" ] && ! [ -s "$state/tokens.env" ]; then
		say "waiting for the servers' join token (printed on the first start)"
		i=0
		while :; do
			tok=$(journalctl -u corral-server -o cat --no-pager |
				sed -n 's/.*corral server -bootstrap-expect [0-9]* -join [^ ]* -join-token \([^ ]*\).*/\1/p' | tail -n 1)
			[ -n "$tok" ] && break
			i=$((i + 1))
			[ $i -lt 120 ] || die "corral-server printed no servers' join token in 2 minutes: journalctl -u corral-server"
			sleep 1
		done
		umask 077
		echo "SERVER_JOIN_TOKEN=$tok" >"$state/tokens.env"
	fi
	say "corral-server is $(systemctl is-active corral-server)"
	;;
agent)
	cat >/etc/corral/agent.hcl <<CONF
# Written by vagrant/provision.sh: agent $name.
data_dir       = "/var/lib/corral/agent"
name           = "$name"
rpc            = "$ip:8644"
serf           = "$ip:8643"
join           = [$join]
server         = "$first:8641"
resource_group = "default"
log_level      = "info"
log_format     = "text"
CONF
	echo "CORRAL_JOIN_TOKEN=$(token AGENT_JOIN_TOKEN)" >/etc/default/corral
	chmod 0600 /etc/default/corral
	echo "export CORRAL_ADDR=http://$first:8640" >/etc/profile.d/corral.sh
	systemctl enable corral-agent >/dev/null 2>&1
	systemctl restart corral-agent
	say "corral-agent is $(systemctl is-active corral-agent)"
	;;
*)
	die "unknown role $role"
	;;
esac
