package main

import (
	"path/filepath"
	"testing"

	"github.com/corral-dev/corral/agent"
)

// TestVolumeRootsAbsolute: a relative data dir (make run's .corral-dev) or
// -volume-root gives absolute backend roots, which kernels' bind mounts
// need.
func TestVolumeRootsAbsolute(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	var cfg agent.Config
	if err := setupVolumes(&cfg, nil, "dev", ".corral-dev", ""); err != nil {
		t.Fatal(err)
	}
	if got, want := cfg.VolumeRoots["local"], filepath.Join(dir, ".corral-dev", "volumes"); got != want {
		t.Errorf("dev's local root = %q, want %q", got, want)
	}
	if err := setupVolumes(&cfg, volumeRootsFlag{"nfs": "srv/vols"}, "agent", "/data", ""); err != nil {
		t.Fatal(err)
	}
	if got, want := cfg.VolumeRoots["nfs"], filepath.Join(dir, "srv", "vols"); got != want {
		t.Errorf("-volume-root nfs=srv/vols = %q, want %q", got, want)
	}
}
