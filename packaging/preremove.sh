#!/bin/sh
# corral prerm: stop the units on removal (not on upgrade: postinst
# restarts them). Stopping the agent leaves its kernels running; drain the
# node first (corral node drain -force) to end them.
set -e
if [ "$1" = "remove" ] && [ -d /run/systemd/system ]; then
	for u in corral-agent corral-server; do
		systemctl disable --now "$u.service" >/dev/null 2>&1 || true
	done
fi
exit 0
