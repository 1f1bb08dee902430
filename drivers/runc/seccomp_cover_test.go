package runc

import (
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/corral-dev/corral/internal/btrfsioc"
)

// TestCoverExcept: the allow blocks for ioctl cover every 32-bit request
// but the btrfs subvolume ones, and none of those.
func TestCoverExcept(t *testing.T) {
	blocks := coverExcept(btrfsioc.SubvolumeIoctls)
	covered := func(v uint32) bool {
		return slices.ContainsFunc(blocks, func(b maskedBlock) bool { return v&b.mask == b.value })
	}
	for _, d := range btrfsioc.SubvolumeIoctls {
		if covered(d) {
			t.Errorf("request %#x is allowed", d)
		}
		for _, near := range []uint32{d - 1, d + 1, d ^ 1<<31, d & 0xffff} {
			if !slices.Contains(btrfsioc.SubvolumeIoctls, near) && !covered(near) {
				t.Errorf("request %#x is refused", near)
			}
		}
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 100000 {
		if v := r.Uint32(); !slices.Contains(btrfsioc.SubvolumeIoctls, v) && !covered(v) {
			t.Fatalf("request %#x is refused", v)
		}
	}
	for _, v := range []uint32{0, 0x5401, 0xc0109428, ^uint32(0)} {
		if !covered(v) {
			t.Errorf("request %#x is refused", v)
		}
	}
	t.Logf("%d masked-equal rules", len(blocks))
}
