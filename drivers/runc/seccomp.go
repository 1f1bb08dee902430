package runc

import (
	"fmt"
	"slices"

	"github.com/moby/profiles/seccomp"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/corral-dev/corral/internal/btrfsioc"
)

// defaultSeccomp returns the container runtimes' default seccomp profile
// (Docker's, from github.com/moby/profiles/seccomp) for spec: an allow
// list that, among others, refuses unshare and clone of new namespaces
// (user namespaces included), keyctl, bpf, mount, ptrace, kernel module
// and clock calls with EPERM, unless spec's bounding capabilities grant
// the capability that makes such a call legitimate (CAP_SYS_ADMIN and so
// on), as Docker does.
//
// One change: the profile's rules for the x32 ABI are left out. The
// filter then refuses x32 system calls altogether (libseccomp's bad-arch
// action kills the caller), stricter than Docker, while 64-bit and 32-bit
// x86 programs see Docker's rules; x32 programs barely exist (Debian's
// kernels and this one disable the ABI), and compiling a third copy of
// the rules costs a kernel's init about 15 ms at every start.
func defaultSeccomp(spec *specs.Spec) (*specs.LinuxSeccomp, error) {
	s, err := seccomp.GetDefaultProfile(spec)
	if err != nil {
		return nil, fmt.Errorf("building the default seccomp profile: %w", err)
	}
	s.Architectures = slices.DeleteFunc(s.Architectures, func(a specs.Arch) bool { return a == specs.ArchX32 })
	denyBtrfsSubvolumes(s)
	return s, nil
}

// denyBtrfsSubvolumes makes the profile refuse (with its default action,
// EPERM) the ioctls that make btrfs subvolumes and snapshots: one made
// inside a volume would escape its quota (agent/quota.go). A conditional
// rule cannot carve exceptions out of the profile's unconditional allow
// of ioctl (libseccomp keeps the unconditional one), and rules compare
// all 64 bits while the kernel reads the request's low 32: so ioctl
// leaves the allow list and comes back as masked-equal rules on the
// request's low 32 bits that cover every request but those four.
func denyBtrfsSubvolumes(s *specs.LinuxSeccomp) {
	for i := range s.Syscalls {
		s.Syscalls[i].Names = slices.DeleteFunc(s.Syscalls[i].Names, func(n string) bool {
			return n == "ioctl" && s.Syscalls[i].Action == specs.ActAllow && len(s.Syscalls[i].Args) == 0
		})
	}
	for _, b := range coverExcept(btrfsioc.SubvolumeIoctls) {
		s.Syscalls = append(s.Syscalls, specs.LinuxSyscall{
			Names: []string{"ioctl"}, Action: specs.ActAllow,
			Args: []specs.LinuxSeccompArg{{Index: 1, Value: uint64(b.mask), ValueTwo: uint64(b.value), Op: specs.OpMaskedEqual}},
		})
	}
}

// maskedBlock is the set of 32-bit values v with v&mask == value.
type maskedBlock struct{ mask, value uint32 }

// coverExcept returns blocks, prefixes of the high bits, whose union is
// every 32-bit value but those in deny (each block holds none of them).
func coverExcept(deny []uint32) []maskedBlock {
	var out []maskedBlock
	var walk func(bits int, prefix uint32)
	walk = func(bits int, prefix uint32) { // the block of the top bits of prefix
		mask := ^uint32(0) << (32 - bits)
		if bits == 0 {
			mask = 0
		}
		in := 0
		for _, d := range deny {
			if d&mask == prefix {
				in++
			}
		}
		switch {
		case in == 0:
			out = append(out, maskedBlock{mask, prefix})
		case bits == 32:
			// a denied value: left out
		default:
			walk(bits+1, prefix)
			walk(bits+1, prefix|1<<(31-bits))
		}
	}
	walk(0, 0)
	return out
}
