package structs

import (
	"fmt"
	"maps"
	"path"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Volume is a user's named directory on a storage backend (a host path
// every agent that reaches the backend has mounted, e.g. NFS or CephFS,
// or a local directory on `corral dev`). Kernels get it bind-mounted
// (Kernel.Volumes). It is owned by one user and shared explicitly.
type Volume struct {
	// ID is "owner/name": names are unique per owner.
	ID    string `json:"id"`
	Name  string `json:"name"`
	Owner string `json:"owner"`
	// Backend names the storage backend (agents' -volume-root NAME=PATH).
	Backend string `json:"backend"`
	// ResourceGroup, when set, is the group whose agents may mount it.
	ResourceGroup string `json:"resource_group,omitempty"`
	// QuotaBytes is the size the owner asked for (0: none); see
	// docs/volumes.md for how it is enforced.
	QuotaBytes int64 `json:"quota_bytes,omitempty"`
	// Shares are the other users that may mount it, by name.
	Shares      []VolumeShare `json:"shares,omitempty"`
	CreatedAt   time.Time     `json:"created_at"`
	CreateIndex uint64        `json:"create_index"`
	ModifyIndex uint64        `json:"modify_index"`
}

// VolumeShare lets one user mount another's volume, read-only or not.
type VolumeShare struct {
	User     string `json:"user"`
	ReadOnly bool   `json:"read_only,omitempty"`
}

// Copy returns a deep copy of v.
func (v *Volume) Copy() *Volume {
	c := *v
	c.Shares = slices.Clone(v.Shares)
	return &c
}

// Dir is the volume's directory below its backend's root: OWNER/NAME.
func (v *Volume) Dir() string { return path.Join(v.Owner, v.Name) }

// Access says whether user may mount the volume and whether only
// read-only (its owner: read-write; a share: as shared).
func (v *Volume) Access(user string) (ok, readOnly bool) {
	if user == v.Owner {
		return true, false
	}
	for _, s := range v.Shares {
		if s.User == user {
			return true, s.ReadOnly
		}
	}
	return false, false
}

// Share adds or replaces user's share, keeping shares sorted by user.
func (v *Volume) Share(user string, readOnly bool) {
	v.Unshare(user)
	v.Shares = append(v.Shares, VolumeShare{User: user, ReadOnly: readOnly})
	slices.SortFunc(v.Shares, func(a, b VolumeShare) int { return strings.Compare(a.User, b.User) })
}

// Unshare removes user's share; it reports whether there was one.
func (v *Volume) Unshare(user string) bool {
	n := len(v.Shares)
	v.Shares = slices.DeleteFunc(v.Shares, func(s VolumeShare) bool { return s.User == user })
	return len(v.Shares) != n
}

// VolumeID is the ID of owner's volume name.
func VolumeID(owner, name string) string { return owner + "/" + name }

var volumeNameRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// CheckVolumeName says what is wrong with a volume or backend name.
func CheckVolumeName(what, name string) error {
	if !volumeNameRe.MatchString(name) || name == "." || name == ".." {
		return fmt.Errorf("invalid %s name %q: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit", what, name)
	}
	return nil
}

// VolumeMount is one volume bound into a kernel, as the agent needs it.
type VolumeMount struct {
	// Volume is the volume's ID (owner/name).
	Volume string `json:"volume"`
	// Backend and Dir locate it on the agent: Dir below the backend's root.
	Backend string `json:"backend"`
	Dir     string `json:"dir"`
	// Target is the path inside the kernel.
	Target   string `json:"target"`
	ReadOnly bool   `json:"read_only,omitempty"`
	// QuotaBytes is the volume's quota (0: none): the agent sets it
	// where the backend's filesystem can hold it.
	QuotaBytes int64 `json:"quota_bytes,omitempty"`
}

// VolumeRef is one -volume argument before it is resolved: a volume
// (NAME for the caller's own, OWNER/NAME for one shared with them), where
// it goes in the kernel, and whether read-only.
type VolumeRef struct {
	Volume   string `json:"volume"`
	Target   string `json:"target"`
	ReadOnly bool   `json:"read_only,omitempty"`
}

// ParseVolumeRef parses NAME:/path[:ro|:rw] (NAME may be OWNER/NAME).
func ParseVolumeRef(s string) (VolumeRef, error) {
	parts := strings.Split(s, ":")
	if len(parts) < 2 || len(parts) > 3 {
		return VolumeRef{}, fmt.Errorf("volume %q: want NAME:/path or NAME:/path:ro", s)
	}
	r := VolumeRef{Volume: parts[0], Target: parts[1]}
	if len(parts) == 3 {
		switch parts[2] {
		case "ro":
			r.ReadOnly = true
		case "rw":
		default:
			return VolumeRef{}, fmt.Errorf("volume %q: mode %q: use ro or rw", s, parts[2])
		}
	}
	return r, r.Check()
}

// Check says what is wrong with a reference.
func (r VolumeRef) Check() error {
	name := r.Volume
	if owner, n, ok := strings.Cut(name, "/"); ok {
		if err := CheckVolumeName("user", owner); err != nil {
			return fmt.Errorf("volume %q: %w", r.Volume, err)
		}
		name = n
	}
	if err := CheckVolumeName("volume", name); err != nil {
		return err
	}
	if !path.IsAbs(r.Target) || path.Clean(r.Target) == "/" || strings.ContainsRune(r.Target, 0) {
		return fmt.Errorf("volume %s: mount path %q must be an absolute path below /", r.Volume, r.Target)
	}
	return nil
}

// SFTPServer makes a kernel serve SFTP on the session's first volume
// instead of running a command (a system session of `corral volume
// sftp`): the agent runs corral-kernel's built-in server as the kernel.
type SFTPServer struct {
	// Port is the TCP port it listens on, declared as the session's
	// service port SFTPPortName.
	Port int `json:"port"`
	// AuthorizedKeys are the owner's SSH public keys (authorized_keys lines).
	AuthorizedKeys []string `json:"authorized_keys"`
	// Root is the directory served (a volume's Target).
	Root string `json:"root"`
}

// SFTPPortName is the service port (app) of an SFTP system session.
const SFTPPortName = "sftp"

// UserSSHKeys are a user's SSH public keys (authorized_keys lines) that
// SFTP system sessions accept.
type UserSSHKeys struct {
	User        string   `json:"user"`
	Keys        []string `json:"keys"`
	ModifyIndex uint64   `json:"modify_index"`
}

// VolumeUpsertRequest creates or replaces a volume.
type VolumeUpsertRequest struct {
	Volume *Volume `json:"volume"`
	// Create refuses the apply when the volume exists.
	Create bool      `json:"create,omitempty"`
	Time   time.Time `json:"time"`
}

// VolumeDeleteRequest removes a volume that no live session mounts.
type VolumeDeleteRequest struct {
	ID   string    `json:"id"`
	Time time.Time `json:"time"`
}

// SSHKeysSetRequest replaces a user's SSH public keys.
type SSHKeysSetRequest struct {
	User string    `json:"user"`
	Keys []string  `json:"keys"`
	Time time.Time `json:"time"`
}

// VolumeBackends returns the distinct backends of a kernel's volumes, sorted.
func VolumeBackends(ms []VolumeMount) []string {
	var out []string
	for _, m := range ms {
		if !slices.Contains(out, m.Backend) {
			out = append(out, m.Backend)
		}
	}
	slices.Sort(out)
	return out
}

// ReachesBackends reports whether agent a reaches every one of backends.
func (a *Agent) ReachesBackends(backends []string) bool {
	for _, b := range backends {
		if _, ok := a.VolumeRoots[b]; !ok {
			return false
		}
	}
	return true
}

// copyVolumeFields deep-copies the volume fields of a kernel copy.
func copyVolumeFields(c, k *Kernel) {
	c.Volumes = slices.Clone(k.Volumes)
	if k.SFTP != nil {
		s := *k.SFTP
		s.AuthorizedKeys = slices.Clone(k.SFTP.AuthorizedKeys)
		c.SFTP = &s
	}
}

// copyAgentVolumeRoots deep-copies an agent's volume roots.
func copyAgentVolumeRoots(c, a *Agent) { c.VolumeRoots = maps.Clone(a.VolumeRoots) }
