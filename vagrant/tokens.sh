#!/bin/sh
# Run on the first server by the Vagrantfile's triggers: prints the
# cluster's tokens as NAME=VALUE lines for /vagrant/vagrant/secrets/tokens.env.
#   SERVER_JOIN_TOKEN  servers 2, 3 join with it (saved by provision.sh)
#   AGENT_JOIN_TOKEN   agents join with it; with "wait" only, as it needs a
#                      raft leader, so all servers up: waits up to 5 minutes
#   ADMIN_TOKEN        the first admin key (with "wait")
set -eu
state=/var/lib/corral/vagrant
cat "$state/tokens.env"
[ "${1:-}" = wait ] || exit 0
admin=/var/lib/corral/server/admin-token
addr=$(sed -n 's/^http *= *"\(.*\)"/\1/p' /etc/corral/server.hcl)
i=0
until [ -s "$admin" ] && tok=$(CORRAL_ADDR="http://$addr" CORRAL_TOKEN=$(cat "$admin") corral system join-token 2>/dev/null); do
	i=$((i + 1))
	if [ $i -ge 150 ]; then
		echo "no agents' join token after 5 minutes: is the raft quorum up? (journalctl -u corral-server on each server)" >&2
		exit 1
	fi
	sleep 2
done
echo "AGENT_JOIN_TOKEN=$tok"
echo "ADMIN_TOKEN=$(cat "$admin")"
