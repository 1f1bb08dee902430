#!/bin/sh
# vm-guest.sh prepares what the vm driver boots, in a cache outside the
# repository (default /var/cache/corral/vm, or $1):
#
#   vmlinuz            Debian's kernel (linux-image-amd64's current image),
#                      fetched with apt-get download, extracted with dpkg -x
#   initramfs.cpio.gz  a busybox-static root, the virtio modules the guest
#                      needs and the guest agent (cmd/corral-vm-guest) as
#                      /init, archived with busybox cpio: no root tools
#
# Run it through `make vm-guest`. The kernel package is cached: later runs
# only rebuild the initramfs (the guest agent may have changed).
set -eu

CACHE=${1:-/var/cache/corral/vm}
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1 || { echo "vm-guest: $1 is missing ($2)" >&2; exit 1; }; }
need apt-get "a Debian machine is needed to fetch the guest kernel"
need dpkg "a Debian machine is needed to extract the guest kernel"
need busybox "install busybox-static (make deps)"

mkdir -p "$CACHE"
# One preparation at a time (test packages run in parallel).
if command -v flock >/dev/null 2>&1; then
	exec 9>"$CACHE/.lock"
	flock 9
fi
work=$(mktemp -d "$CACHE/.prep.XXXXXX")
trap 'rm -rf "$work"' EXIT

# The kernel: the image that linux-image-amd64 depends on now.
pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[ -n "$pkg" ] || { echo "vm-guest: apt-cache knows no linux-image-amd64 (run apt-get update)" >&2; exit 1; }
kdir="$CACHE/$pkg"
# The modules the guest needs, in load order (each after its dependencies,
# as modules.dep of the package has them): virtio, the console and
# network, the power button; virtio_blk and ext4 (with crc32c, which ext4's
# checksums ask the crypto API for) for disk images; 9p over virtio for
# volumes. .done holds the list:
# a changed list fetches the package again.
MODULES="virtio_ring virtio virtio_mmio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci \
virtio_console failover net_failover virtio_net button evdev \
virtio_blk crc16 mbcache jbd2 crc32c_generic ext4 \
netfs fscache 9pnet 9pnet_virtio 9p"
if [ "$(cat "$kdir/.done" 2>/dev/null)" != "$MODULES" ]; then
	echo "vm-guest: fetching $pkg"
	rm -rf "$kdir"
	mkdir -p "$kdir"
	(cd "$work" && apt-get download -q "$pkg" >/dev/null 2>&1) || { echo "vm-guest: apt-get download $pkg failed" >&2; exit 1; }
	dpkg -x "$work"/"$pkg"_*.deb "$kdir/x"
	cp "$kdir"/x/boot/vmlinuz-* "$kdir/vmlinuz"
	# Keep the modules the guest needs, drop the rest (hundreds of MB).
	mkdir -p "$kdir/modules"
	for m in $MODULES; do
		f=$(find "$kdir"/x/lib/modules -name "$m.ko" | head -n 1)
		# fscache is part of netfs from Linux 6.8 on: optional.
		[ -n "$f" ] || [ "$m" != fscache ] || continue
		[ -n "$f" ] || { echo "vm-guest: module $m.ko not in $pkg" >&2; exit 1; }
		cp "$f" "$kdir/modules/"
		echo "$m.ko" >>"$kdir/modules/order"
	done
	rm -rf "$kdir/x" "$work"/*.deb
	echo "$MODULES" >"$kdir/.done"
fi

# The initramfs root.
root="$work/root"
mkdir -p "$root/bin" "$root/sbin" "$root/usr/bin" "$root/usr/sbin" "$root/lib/corral" \
	"$root/proc" "$root/sys" "$root/dev" "$root/tmp" "$root/run" "$root/etc" "$root/corral" "$root/root"
cp "$(command -v busybox)" "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
	[ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
done
cp -r "$kdir/modules" "$root/lib/corral/modules"
echo "root:x:0:0:root:/root:/bin/sh" >"$root/etc/passwd"
echo "root:x:0:" >"$root/etc/group"
CGO_ENABLED=0 "$GO" build -trimpath -ldflags "-s -w" -o "$root/init" ./cmd/corral-vm-guest
(cd "$root" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1 >"$work/initramfs.cpio.gz")

mv "$work/initramfs.cpio.gz" "$CACHE/initramfs.cpio.gz"
ln -sfn "$pkg/vmlinuz" "$CACHE/vmlinuz"
echo "vm-guest: $CACHE/vmlinuz ($pkg) and $CACHE/initramfs.cpio.gz ready"
