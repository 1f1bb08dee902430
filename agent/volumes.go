package agent

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/crypto/ssh"

	"github.com/corral-dev/corral/internal/btrfsioc"
	"github.com/corral-dev/corral/plugins/drivers"
	"github.com/corral-dev/corral/rpc"
	"github.com/corral-dev/corral/structs"
)

// Volumes (docs/volumes.md): the agent reaches the storage backends of
// Config.VolumeRoots; a volume is the directory ROOT/OWNER/NAME there,
// made on first mount and owned by the uid the kernel's files get
// (Config.VolumeOwner), and bound into the kernel at its target.

// sftpSubdir holds an SFTP kernel's host key and authorized keys in its
// task directory, bound read-only into the kernel at the same path.
const sftpSubdir = "corral-sftp"

// volumeHostDir is where a mount's volume lies on this agent.
func (a *Agent) volumeHostDir(m structs.VolumeMount) (string, error) {
	root, ok := a.cfg.VolumeRoots[m.Backend]
	if !ok {
		return "", fmt.Errorf("volume %s: this agent reaches no backend %q (its -volume-root flags name %s)", m.Volume, m.Backend, backendList(a.cfg.VolumeRoots))
	}
	dir := filepath.Join(root, filepath.FromSlash(m.Dir))
	if rel, err := filepath.Rel(root, dir); err != nil || rel == "." || strings.HasPrefix(rel, "..") {
		return "", fmt.Errorf("volume %s: directory %q is not below the backend's root", m.Volume, m.Dir)
	}
	return dir, nil
}

func backendList(roots map[string]string) string {
	if len(roots) == 0 {
		return "none"
	}
	var names []string
	for n := range roots {
		names = append(names, n)
	}
	return strings.Join(names, ", ")
}

// prepareVolumes makes the kernel's volume directories (owned by the
// kernel's uid) and adds their bind mounts to cfg; for an SFTP kernel it
// also places the helper and its keys and makes the server its command.
func (r *kernelRunner) prepareVolumes(cfg *drivers.TaskConfig) error {
	k := r.kernel
	if len(k.Volumes) == 0 && k.SFTP == nil {
		return nil
	}
	uid, gid := -1, -1
	if r.a.cfg.VolumeOwner != nil {
		var err error
		if uid, gid, err = r.a.cfg.VolumeOwner(k); err != nil {
			return err
		}
	}
	for _, m := range k.Volumes {
		dir, err := r.a.volumeHostDir(m)
		if err != nil {
			return err
		}
		if err := ensureVolumeDir(dir, uid, gid); err != nil {
			return fmt.Errorf("volume %s: %w", m.Volume, err)
		}
		if _, err := r.a.enforceQuota(dir, m.QuotaBytes, true); err != nil {
			// The kernel starts: its volume is measured, as on any
			// filesystem without quotas.
			r.a.logger.Warn("volume quota not enforced", "volume", m.Volume, "error", err)
		}
		mnt := drivers.Mount{Source: dir, Destination: m.Target, ReadOnly: m.ReadOnly, Volume: true}
		if uid >= 0 {
			mnt.Owner = &drivers.MountOwner{UID: uint32(uid), GID: uint32(gid)}
		}
		cfg.Mounts = append(cfg.Mounts, mnt)
	}
	if k.SFTP != nil {
		return r.prepareSFTP(cfg, uid, gid)
	}
	return nil
}

// ensureVolumeDir makes dir (and its owner's directory) when missing, a
// btrfs subvolume where the backend is on btrfs (quota.go), and hands a
// new one to uid:gid (-1: leave it root's), mode 0750.
func ensureVolumeDir(dir string, uid, gid int) error {
	if fi, err := os.Stat(dir); err == nil {
		if !fi.IsDir() {
			return fmt.Errorf("%s is not a directory", dir)
		}
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return err
	}
	if err := makeVolumeDir(dir); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	if uid >= 0 {
		if err := os.Lchown(dir, uid, gid); err != nil {
			return fmt.Errorf("handing %s to uid %d: %w", dir, uid, err)
		}
	}
	return nil
}

// prepareSFTP writes an SFTP kernel's host key (new for the kernel) and
// the owner's authorized keys into its task directory, places the
// corral-kernel helper, and makes `corral-kernel sftp` the command.
func (r *kernelRunner) prepareSFTP(cfg *drivers.TaskConfig, uid, gid int) error {
	s := r.kernel.SFTP
	if r.kernel.Image != "" {
		return fmt.Errorf("an SFTP kernel runs corral's own server on the host: use the exec driver")
	}
	dir := filepath.Join(cfg.TaskDir, sftpSubdir)
	binDir := filepath.Join(cfg.TaskDir, clusterBinSubdir)
	helper, err := r.a.kernelHelper()
	if err != nil {
		return err
	}
	if err := placeHelper(helper, binDir); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		return err
	}
	hostKey := filepath.Join(dir, "host_key")
	authKeys := filepath.Join(dir, "authorized_keys")
	if err := os.WriteFile(hostKey, pem.EncodeToMemory(block), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(authKeys, []byte(strings.Join(s.AuthorizedKeys, "\n")+"\n"), 0o600); err != nil {
		return err
	}
	if uid >= 0 {
		for _, p := range []string{dir, hostKey, authKeys} {
			if err := os.Lchown(p, uid, gid); err != nil {
				return err
			}
		}
	}
	cfg.Mounts = append(cfg.Mounts,
		drivers.Mount{Source: dir, Destination: dir, ReadOnly: true},
		drivers.Mount{Source: binDir, Destination: binDir, ReadOnly: true})
	cfg.Command = []string{filepath.Join(binDir, KernelHelperName), "sftp",
		"-listen", "127.0.0.1:" + strconv.Itoa(s.Port), "-root", s.Root,
		"-host-key", hostKey, "-authorized-keys", authKeys}
	return nil
}

// VolumeUsage measures volume directories (a du: the bytes of regular
// files and how many entries) on the backends this agent reaches, and
// says how each one's quota holds, setting it where it can (quota.go).
func (s *agentService) VolumeUsage(ctx context.Context, req *rpc.VolumeUsageRequest) (*rpc.VolumeUsageResponse, error) {
	out := &rpc.VolumeUsageResponse{}
	for _, v := range req.Volumes {
		u := rpc.VolumeUsage{Backend: v.Backend, Dir: v.Dir}
		dir, err := s.a.volumeHostDir(structs.VolumeMount{Volume: v.Dir, Backend: v.Backend, Dir: v.Dir})
		var nested int
		if err == nil {
			u.Bytes, u.Files, nested, err = du(ctx, dir)
		}
		if errors.Is(err, fs.ErrNotExist) {
			err = nil // never mounted yet: empty
			if v.QuotaBytes > 0 && btrfsioc.OnBtrfs(s.a.cfg.VolumeRoots[v.Backend]) {
				u.Quota = QuotaEnforced // its first mount makes a subvolume and sets the limit
			}
		} else if err == nil && v.QuotaBytes > 0 {
			var qerr error
			if u.Quota, qerr = s.a.enforceQuota(dir, v.QuotaBytes, false); qerr != nil {
				s.a.logger.Warn("volume quota not enforced", "dir", dir, "error", qerr)
			}
			if nested > 0 && u.Quota == QuotaEnforced {
				// A subvolume inside has a qgroup of its own: what it
				// holds is outside the limit (exec kernels cannot make
				// one; others, or the host, could).
				u.Quota = QuotaMeasured
				s.a.logger.Warn("volume quota not enforced: btrfs subvolumes inside the volume escape it", "dir", dir, "subvolumes", nested)
			}
		}
		if v.QuotaBytes > 0 && u.Quota == "" {
			u.Quota = QuotaMeasured
		}
		if err != nil {
			u.Error = err.Error()
		}
		out.Volumes = append(out.Volumes, u)
	}
	return out, nil
}

// du sums the sizes of the regular files below dir and counts its
// entries, and the btrfs subvolumes below it (directories with a
// subvolume root's inode number).
func du(ctx context.Context, dir string) (bytes, files int64, subvolumes int, err error) {
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if p == dir {
			return nil
		}
		files++
		if d.IsDir() && isSubvolume(p) {
			subvolumes++
		}
		if d.Type().IsRegular() {
			fi, err := d.Info()
			if err != nil {
				return nil // removed meanwhile
			}
			bytes += fi.Size()
		}
		return nil
	})
	return bytes, files, subvolumes, err
}
