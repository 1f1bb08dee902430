package runc

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// UserNSMode says whether kernels get a user namespace of their own, in
// which their root is an unprivileged host uid.
type UserNSMode int

const (
	// UserNSAuto gives kernels a user namespace where the host supports
	// unprivileged user namespaces and idmapped mounts under overlayfs,
	// and runs them without one otherwise (with a warning).
	UserNSAuto UserNSMode = iota
	// UserNSOn gives every kernel a user namespace; a start fails where
	// the host cannot.
	UserNSOn
	// UserNSOff runs kernels in the host's user namespace: container root
	// is host root, confined by capabilities, seccomp and namespaces only.
	UserNSOff
)

// String returns "auto", "true" or "false".
func (m UserNSMode) String() string {
	switch m {
	case UserNSOn:
		return "true"
	case UserNSOff:
		return "false"
	default:
		return "auto"
	}
}

// ParseUserNSMode reads "auto", or a boolean as strconv.ParseBool does.
func ParseUserNSMode(s string) (UserNSMode, error) {
	if s == "auto" || s == "" {
		return UserNSAuto, nil
	}
	b, err := strconv.ParseBool(s)
	if err != nil {
		return UserNSAuto, fmt.Errorf("user namespace mode %q: want auto, true or false", s)
	}
	if b {
		return UserNSOn, nil
	}
	return UserNSOff, nil
}

const (
	// idRangeBase is the first host uid (and gid) of kernels' id ranges:
	// far above the ranges that adduser puts in /etc/subuid (100000 and
	// up, 65536 per user), so that no host user's rootless containers
	// share ids with kernels.
	idRangeBase = 1 << 30
	// idRangeSize is how many ids a kernel's user namespace maps (0..65535).
	idRangeSize = 65536
	// idRangeSlots is how many ranges fit below 2^31.
	idRangeSlots = (1<<31 - idRangeBase) / idRangeSize
)

// idRange is the block of host uids and gids that a kernel's user
// namespace maps its ids 0..Size-1 to: container root is host uid HostID.
// Every running kernel has its own block.
type idRange struct {
	// Index numbers the block: HostID = idRangeBase + Index*idRangeSize.
	Index  int    `json:"index"`
	HostID uint32 `json:"host_id"`
	Size   uint32 `json:"size"`
}

// idRanges hands out id blocks to kernels, one each.
type idRanges struct {
	mu   sync.Mutex
	used map[int]string // index → task ID
}

// alloc returns the lowest free block for taskID.
func (r *idRanges) alloc(taskID string) (*idRange, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.used == nil {
		r.used = map[int]string{}
	}
	for i := range idRangeSlots {
		if _, ok := r.used[i]; !ok {
			r.used[i] = taskID
			return &idRange{Index: i, HostID: uint32(idRangeBase + i*idRangeSize), Size: idRangeSize}, nil
		}
	}
	return nil, fmt.Errorf("all %d user namespace id ranges are in use", idRangeSlots)
}

// mark records a recovered kernel's block as in use.
func (r *idRanges) mark(taskID string, ids *idRange) {
	if ids == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.used == nil {
		r.used = map[int]string{}
	}
	r.used[ids.Index] = taskID
}

// free returns taskID's block.
func (r *idRanges) free(taskID string, ids *idRange) {
	if ids == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.used[ids.Index] == taskID {
		delete(r.used, ids.Index)
	}
}

// usernsSupport says why this host cannot give kernels user namespaces
// with idmapped rootfs layers, nil when it can. The overlay itself is
// tried at each start.
func usernsSupport() error {
	b, err := os.ReadFile("/proc/sys/user/max_user_namespaces")
	if err != nil {
		return fmt.Errorf("the kernel has no user namespaces: %w", err)
	}
	if n, _ := strconv.Atoi(strings.TrimSpace(string(b))); n <= 0 {
		return errors.New("user namespaces are disabled (/proc/sys/user/max_user_namespaces is 0)")
	}
	if !overlayAvailable() {
		return errors.New("the kernel lacks overlayfs, over which kernels' roots get idmapped image layers")
	}
	return nil
}

// usernsFile returns a handle of a new user namespace with ids mapped as
// the kernel's will be, to idmap mounts with. It is held by a process
// that is stopped before it runs anything (it is traced and stops at its
// exec) and killed once the namespace is open.
func usernsFile(ids *idRange) (*os.File, error) {
	return usernsFileMap([]syscall.SysProcIDMap{{ContainerID: 0, HostID: int(ids.HostID), Size: int(ids.Size)}},
		[]syscall.SysProcIDMap{{ContainerID: 0, HostID: int(ids.HostID), Size: int(ids.Size)}})
}

// usernsFileMap is usernsFile with the given uid (m) and gid (g) maps.
func usernsFileMap(m, g []syscall.SysProcIDMap) (*os.File, error) {
	p, err := os.StartProcess("/proc/self/exe", []string{"corral-userns"}, &os.ProcAttr{
		Sys: &syscall.SysProcAttr{
			Cloneflags:  unix.CLONE_NEWUSER,
			UidMappings: m,
			GidMappings: g,
			Ptrace:      true,
			Pdeathsig:   unix.SIGKILL,
		},
	})
	if err != nil {
		return nil, fmt.Errorf("creating a user namespace for the idmapped mount: %w", err)
	}
	defer func() {
		_ = p.Kill()
		_, _ = p.Wait()
	}()
	f, err := os.Open("/proc/" + strconv.Itoa(p.Pid) + "/ns/user")
	if err != nil {
		return nil, fmt.Errorf("opening the user namespace for the idmapped mount: %w", err)
	}
	return f, nil
}

// idmapMount bind-mounts src at target with its owners shifted into ids:
// a file of uid n under src shows as uid HostID+n under target, so that
// the kernel's user namespace sees it as n.
func idmapMount(src, target string, ids *idRange) error {
	ns, err := usernsFile(ids)
	if err != nil {
		return err
	}
	defer ns.Close()
	fd, err := unix.OpenTree(unix.AT_FDCWD, src, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
	if err != nil {
		return fmt.Errorf("open_tree %s: %w", src, err)
	}
	defer unix.Close(fd)
	attr := &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_IDMAP | unix.MOUNT_ATTR_RDONLY, Userns_fd: uint64(ns.Fd())}
	if err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH, attr); err != nil {
		return fmt.Errorf("idmapping %s (mount_setattr; needs Linux 5.12 and a file system that supports idmapped mounts): %w", src, err)
	}
	if err := unix.MoveMount(fd, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("moving the idmapped mount of %s to %s: %w", src, target, err)
	}
	return nil
}

// probeIDMappedOverlay checks, in a scratch directory below stateDir (on
// the file system of the kernels' state, next to their task dirs in a
// default setup), that an overlay over an idmapped lower layer works and
// shows the layer's files owned by the mapped ids.
func probeIDMappedOverlay(stateDir string) (err error) {
	if err := os.MkdirAll(stateDir, 0o711); err != nil {
		return fmt.Errorf("probing idmapped mounts: %w", err)
	}
	dir, err := os.MkdirTemp(stateDir, ".userns-probe-")
	if err != nil {
		return fmt.Errorf("probing idmapped mounts: %w", err)
	}
	defer func() {
		if uerr := unmountBelow(dir); uerr != nil && err == nil {
			err = uerr
		}
		_ = os.RemoveAll(dir)
	}()
	image := dir + "/image"
	if err := os.Mkdir(image, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(image+"/f", nil, 0o644); err != nil {
		return err
	}
	if err := os.Mkdir(dir+"/rootfs", 0o755); err != nil {
		return err
	}
	ids := &idRange{HostID: idRangeBase, Size: idRangeSize}
	if err := mountOverlay(image, dir, dir+"/rootfs", ids); err != nil {
		return fmt.Errorf("overlay over an idmapped image: %w", err)
	}
	var st unix.Stat_t
	if err := unix.Stat(dir+"/rootfs/f", &st); err != nil {
		return err
	}
	if st.Uid != idRangeBase {
		return fmt.Errorf("overlay over an idmapped image shows uid %d, want %d", st.Uid, idRangeBase)
	}
	return nil
}
