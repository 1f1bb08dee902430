#!/bin/sh
# corral postinst: the corral system user (the server runs as it), and
# systemd's view of the units. Nothing is enabled or started: a node is a
# server, an agent or both, which the operator decides (docs/operator.md).
set -e
if ! getent passwd corral >/dev/null; then
	adduser --system --group --home /var/lib/corral --no-create-home \
		--gecos "corral server" corral >/dev/null 2>&1 ||
		useradd --system --user-group --home-dir /var/lib/corral --shell /usr/sbin/nologin corral
fi
install -d -m 0755 /var/lib/corral
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null || true
	# An upgrade restarts what runs: the agent's kernels keep running
	# (KillMode=process) and the restarted agent reattaches them.
	if [ "$1" = "configure" ] && [ -n "$2" ]; then
		for u in corral-server corral-agent; do
			if systemctl is-active --quiet "$u.service"; then
				systemctl restart "$u.service" || true
			fi
		done
	fi
fi
exit 0
