#!/bin/bash
# build-rootfs.sh ROOT [MIRROR]: makes the e2e MPI image's root filesystem in
# ROOT (which must not exist): a Debian bookworm minbase with openmpi-bin,
# and allreduce and pingpong (this directory's C programs) compiled in a
# chroot into /opt/mpi. The compiler and the headers are removed again:
# the image keeps only what the programs need at run time. No sshd.
set -euo pipefail
root=$1
mirror=${2:-http://deb.debian.org/debian}
src=$(cd "$(dirname "$0")" && pwd)
export DEBIAN_FRONTEND=noninteractive LC_ALL=C

debootstrap --variant=minbase --include=openmpi-bin bookworm "$root" "$mirror"
chroot "$root" dpkg-query -W -f '${Package}\n' | sort >"$root/tmp/runtime.pkgs"

mount -t proc proc "$root/proc"
trap 'umount -l "$root/proc" 2>/dev/null || true' EXIT
apt="apt-get -q -o APT::Sandbox::User=root -o Dpkg::Use-Pty=0"
chroot "$root" $apt install -y --no-install-recommends gcc libc6-dev
# mpi.h only: libopenmpi-dev's dependencies (gfortran, hwloc and ibverbs
# headers, ...) are not needed to compile two C programs.
chroot "$root" sh -c "cd /tmp && $apt download libopenmpi-dev && dpkg -x libopenmpi-dev_*.deb /tmp/ompi-dev"
inc=$(dirname "$(cd "$root" && find tmp/ompi-dev -name mpi.h | head -n1)")
lib=$(cd "$root" && find usr/lib -name 'libmpi.so.40' | head -n1)
mkdir -p "$root/opt/mpi"
for p in allreduce pingpong; do
	cp "$src/$p.c" "$root/opt/mpi/"
	chroot "$root" gcc -O2 -Wall -I"/$inc" -o "/opt/mpi/$p" "/opt/mpi/$p.c" "/$lib"
done

# Back to the run-time package set.
chroot "$root" dpkg-query -W -f '${Package}\n' | sort >"$root/tmp/all.pkgs"
extra=$(comm -13 "$root/tmp/runtime.pkgs" "$root/tmp/all.pkgs")
if [ -n "$extra" ]; then
	# shellcheck disable=SC2086
	chroot "$root" $apt purge -y $extra
fi
chroot "$root" /opt/mpi/allreduce --version >/dev/null 2>&1 || true
chroot "$root" sh -c 'ldd /opt/mpi/allreduce /opt/mpi/pingpong | grep "not found"' && {
	echo "build-rootfs: the MPI programs miss libraries after the purge" >&2
	exit 1
}
chroot "$root" $apt clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/* \
	"$root"/usr/share/locale/* "$root"/usr/share/info/* "$root"/var/log/* "$root"/tmp/* "$root"/var/cache/debconf/*-old
echo "build-rootfs: done; ssh programs in the image:" $(cd "$root" && ls usr/bin/ssh usr/sbin/sshd 2>/dev/null || echo none)
