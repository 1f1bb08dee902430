package runc

import (
	"fmt"
	"slices"

	"github.com/moby/profiles/seccomp"
	specs "github.com/opencontainers/runtime-spec/specs-go"
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
	return s, nil
}
