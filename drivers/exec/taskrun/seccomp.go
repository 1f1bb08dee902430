package taskrun

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/corral-dev/corral/internal/btrfsioc"
)

// A kernel's command gets a seccomp filter that refuses (EPERM) the btrfs
// ioctls making subvolumes and snapshots, and allows everything else. On
// a btrfs volume backend each volume is a subvolume held to its quota by
// a qgroup limit (agent/quota.go); a subvolume made inside it would get a
// qgroup of its own, without a limit, and escape the quota. Creating one
// needs no capability, only write access, hence the filter. (The exec
// driver's other defences are the unprivileged uid, no_new_privs and the
// namespaces; it has no general system call filter.)

const (
	auditArchX86_64 = 0xc000003e
	auditArchI386   = 0x40000003
	sysIoctlX86_64  = 16
	sysIoctlI386    = 54
	// struct seccomp_data: nr at 0, arch at 4, args[1]'s low 32 bits at
	// 24 (little-endian; the kernel reads the request as an unsigned int).
	seccompDataNr   = 0
	seccompDataArch = 4
	seccompDataArg1 = 24
)

func bpfStmt(code uint16, k uint32) unix.SockFilter {
	return unix.SockFilter{Code: code, K: k}
}

func bpfJump(k uint32, jt, jf uint8) unix.SockFilter {
	return unix.SockFilter{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: jt, Jf: jf, K: k}
}

// subvolumeFilter is the filter's program: x86_64 and i386 ioctls with a
// subvolume request get EPERM; any other call, or architecture, passes.
func subvolumeFilter() []unix.SockFilter {
	ld := unix.BPF_LD | unix.BPF_W | unix.BPF_ABS
	prog := []unix.SockFilter{
		bpfStmt(uint16(ld), seccompDataArch), // 0
		bpfJump(auditArchX86_64, 0, 2),       // 1: -> 2, else 4
		bpfStmt(uint16(ld), seccompDataNr),   // 2
		bpfJump(sysIoctlX86_64, 3, 8),        // 3: -> 7, else 12 (allow)
		bpfJump(auditArchI386, 0, 7),         // 4: -> 5, else 12
		bpfStmt(uint16(ld), seccompDataNr),   // 5
		bpfJump(sysIoctlI386, 0, 5),          // 6: -> 7, else 12
		bpfStmt(uint16(ld), seccompDataArg1), // 7
	}
	for i, req := range btrfsioc.SubvolumeIoctls { // 8..11: -> 13 (deny)
		prog = append(prog, bpfJump(req, uint8(len(btrfsioc.SubvolumeIoctls)-i), 0))
	}
	return append(prog,
		bpfStmt(unix.BPF_RET|unix.BPF_K, unix.SECCOMP_RET_ALLOW),                    // 12
		bpfStmt(unix.BPF_RET|unix.BPF_K, unix.SECCOMP_RET_ERRNO|uint32(unix.EPERM))) // 13
}

// denySubvolumes installs the filter on the calling thread (locked to its
// goroutine, with no_new_privs set): the command it starts or executes
// inherits it.
func denySubvolumes() error {
	prog := subvolumeFilter()
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	if err := unix.Prctl(unix.PR_SET_SECCOMP, unix.SECCOMP_MODE_FILTER, uintptr(unsafe.Pointer(&fprog)), 0, 0); err != nil {
		return fmt.Errorf("installing the seccomp filter: %w", err)
	}
	return nil
}
