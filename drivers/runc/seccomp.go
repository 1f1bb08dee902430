package runc

import (
	"fmt"

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
func defaultSeccomp(spec *specs.Spec) (*specs.LinuxSeccomp, error) {
	s, err := seccomp.GetDefaultProfile(spec)
	if err != nil {
		return nil, fmt.Errorf("building the default seccomp profile: %w", err)
	}
	return s, nil
}
