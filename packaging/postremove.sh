#!/bin/sh
# corral postrm: purge removes the state (raft data, the cluster CA, the
# agents' kernel directories) and the corral user; remove keeps them.
set -e
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || true
fi
if [ "$1" = "purge" ]; then
	rm -rf /var/lib/corral
	if getent passwd corral >/dev/null; then
		deluser --system corral >/dev/null 2>&1 || userdel corral >/dev/null 2>&1 || true
	fi
fi
exit 0
