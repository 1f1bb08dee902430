package vm

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadConfig(t *testing.T) {
	for _, k := range []string{"CORRAL_VM_CONFIG", "CORRAL_VM_KERNEL", "CORRAL_VM_INITRD", "CORRAL_VM_QEMU", "CORRAL_VM_ACCEL", "CORRAL_VM_RUN_AS"} {
		t.Setenv(k, "")
		os.Unsetenv(k)
	}
	dir := t.TempDir()
	self := filepath.Join(dir, "corral-driver-vm")

	c, err := LoadConfig(self)
	if err != nil || c.Kernel != DefaultCacheDir+"/vmlinuz" || c.Accel != AccelAuto || c.RunAs != "nobody" {
		t.Fatalf("without a file: %+v, %v; want the defaults", c, err)
	}
	if err := os.WriteFile(self+".json", []byte(`{"kernel": "/k", "accel": "tcg"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CORRAL_VM_INITRD", "/i")
	c, err = LoadConfig(self)
	if err != nil || c.Kernel != "/k" || c.Initrd != "/i" || c.Accel != AccelTCG || c.Qemu != "qemu-system-x86_64" {
		t.Fatalf("file and env: %+v, %v", c, err)
	}
	t.Setenv("CORRAL_VM_ACCEL", "fast")
	if _, err := LoadConfig(self); err == nil || !strings.Contains(err.Error(), `accel "fast"`) {
		t.Errorf("bad accel: err = %v", err)
	}
	t.Setenv("CORRAL_VM_ACCEL", "")
	if err := os.WriteFile(self+".json", []byte(`{"kernal": "/k"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadConfig(self); err == nil || !strings.Contains(err.Error(), "kernal") {
		t.Errorf("unknown field: err = %v", err)
	}
	t.Setenv("CORRAL_VM_CONFIG", filepath.Join(dir, "missing.json"))
	if _, err := LoadConfig(self); err == nil {
		t.Error("a named config file that is missing is no error")
	}
}

// TestResolvConf: the guest's resolv.conf is the host's without loopback
// name servers.
func TestResolvConf(t *testing.T) {
	p := filepath.Join(t.TempDir(), "resolv.conf")
	src := "# comment\nnameserver 127.0.0.53\nnameserver 10.1.2.3\nnameserver ::1\nsearch example.org\noptions edns0\n"
	if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	want := "# comment\nnameserver 10.1.2.3\nsearch example.org\noptions edns0\n"
	if got := resolvConf(p); got != want {
		t.Errorf("resolvConf = %q, want %q", got, want)
	}
	if got := resolvConf(filepath.Join(t.TempDir(), "missing")); got != "" {
		t.Errorf("resolvConf of a missing file = %q, want empty", got)
	}
}
