package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/corral-dev/corral/agent"
	execdriver "github.com/corral-dev/corral/drivers/exec"
	"github.com/corral-dev/corral/structs"
)

// volumeRootsFlag is -volume-root NAME=PATH (repeatable): a storage
// backend this agent reaches and its root directory.
type volumeRootsFlag map[string]string

func (v *volumeRootsFlag) String() string {
	var parts []string
	for n, p := range *v {
		parts = append(parts, n+"="+p)
	}
	return strings.Join(parts, ",")
}

func (v *volumeRootsFlag) Set(s string) error {
	name, path, ok := strings.Cut(s, "=")
	if !ok || path == "" {
		return fmt.Errorf("want NAME=/path, e.g. -volume-root nfs=/srv/vols")
	}
	if err := structs.CheckVolumeName("backend", name); err != nil {
		return err
	}
	if !filepath.IsAbs(path) {
		return fmt.Errorf("backend %s: root %q must be an absolute path", name, path)
	}
	if *v == nil {
		*v = volumeRootsFlag{}
	}
	if _, dup := (*v)[name]; dup {
		return fmt.Errorf("backend %s is given twice", name)
	}
	(*v)[name] = filepath.Clean(path)
	return nil
}

// volumeRootsHelp is the usage line of -volume-root.
const volumeRootsHelp = "storage backend this agent reaches for volumes, NAME=/path (repeatable; a directory shared by NFS/CephFS on every agent of the backend, or local; made when missing). corral dev: default local=DATA_DIR/volumes"

// setupVolumes fills the agent's volume settings: the roots (made when
// missing; dev gets a local backend in its data dir unless given one)
// and the owner of volume directories: the uid exec kernels run as.
func setupVolumes(cfg *agent.Config, roots volumeRootsFlag, role, dataDir, execUser string) error {
	if len(roots) == 0 && role == "dev" {
		roots = volumeRootsFlag{"local": filepath.Join(dataDir, "volumes")}
	}
	abs := volumeRootsFlag{}
	for name, p := range roots {
		// Kernels get volumes as bind mounts of absolute paths: a
		// relative root (a relative -data-dir, as make run's) is made
		// absolute here, once.
		a, err := filepath.Abs(p)
		if err != nil {
			return fmt.Errorf("-volume-root %s: %w", name, err)
		}
		if err := os.MkdirAll(a, 0o755); err != nil {
			return fmt.Errorf("-volume-root %s: %w", name, err)
		}
		abs[name] = a
	}
	roots = abs
	cfg.VolumeRoots = roots
	if execUser == "" {
		execUser = execdriver.DefaultUser
	}
	cfg.VolumeOwner = func(*structs.Kernel) (int, int, error) {
		if os.Geteuid() != 0 {
			return -1, -1, nil // files are the agent's own user's
		}
		return execdriver.TaskUserIDs(execUser)
	}
	return nil
}

// volumeFlag is session create's -volume NAME:/path[:ro] (repeatable).
type volumeFlag []string

func (v *volumeFlag) String() string { return strings.Join(*v, ",") }
func (v *volumeFlag) Set(s string) error {
	if !strings.Contains(s, ":") {
		s += ":/volume" // -sftp -volume NAME: served from /volume
	}
	if _, err := structs.ParseVolumeRef(s); err != nil {
		return err
	}
	*v = append(*v, s)
	return nil
}
