package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/corral-dev/corral/e2e/testbed"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// The MPI test image: a Debian bookworm root filesystem with Open MPI
// (openmpi-bin, no sshd), made by debootstrap the first time and cached
// outside the repository, plus a layer with netcheck built at test time.
const (
	// mpiImageVersion keys the cached root filesystem; bump it when the
	// recipe changes in a way the sources' hash does not show.
	mpiImageVersion = "1"
	// mpiMirror is the Debian mirror debootstrap and apt use.
	mpiMirror = "http://deb.debian.org/debian"
	// mpiDir is where the image's programs are, its working directory.
	mpiDir = "/opt/mpi"
)

// mpiSources are the files the cached root filesystem is made from.
var mpiSources = []string{"build-rootfs.sh", "allreduce.c", "pingpong.c"}

// mpiCacheDir is where the root filesystem tarball is kept between runs.
func mpiCacheDir() string {
	if d := os.Getenv("CORRAL_TEST_CACHE"); d != "" {
		return d
	}
	return "/var/cache/corral-test"
}

// mpiRootfsKey is the version constant and a hash of the sources, so that
// an edited program or recipe builds a new root filesystem.
func mpiRootfsKey() (string, error) {
	h := sha256.New()
	for _, f := range mpiSources {
		b, err := os.ReadFile(filepath.Join("testdata", "mpi", f))
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s %d\n", f, len(b))
		h.Write(b)
	}
	return mpiImageVersion + "-" + hex.EncodeToString(h.Sum(nil))[:12], nil
}

// mpiMirrorUnreachable says why apt cannot reach the Debian mirror, or "".
func mpiMirrorUnreachable() string {
	c := &http.Client{Timeout: 15 * time.Second}
	resp, err := c.Head(mpiMirror + "/dists/bookworm/Release")
	if err != nil {
		return err.Error()
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return resp.Status
	}
	return ""
}

// mpiRootfs returns the path of the cached root filesystem tarball
// (.tar.gz), building it first when it is missing. It skips the test only
// when the Debian mirror is unreachable; any other failure fails it.
func mpiRootfs(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("MPI e2e needs root (debootstrap, chroot, runc)")
	}
	key, err := mpiRootfsKey()
	if err != nil {
		t.Fatalf("MPI image sources: %v", err)
	}
	dir := mpiCacheDir()
	out := filepath.Join(dir, "mpi-rootfs-"+key+".tar.gz")
	if _, err := os.Stat(out); err == nil {
		return out
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("MPI image cache: %v", err)
	}
	// One build at a time (parallel test processes share the cache).
	lock, err := os.OpenFile(filepath.Join(dir, "mpi-rootfs.lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatalf("MPI image cache lock: %v", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatalf("MPI image cache lock: %v", err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	if _, err := os.Stat(out); err == nil {
		return out // built by another process meanwhile
	}

	if _, err := exec.LookPath("debootstrap"); err != nil {
		if why := mpiMirrorUnreachable(); why != "" {
			t.Skipf("MPI image: debootstrap is missing and the Debian mirror is unreachable (%s)", why)
		}
		inst := exec.Command("apt-get", "install", "-y", "-q", "debootstrap")
		inst.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if b, err := inst.CombinedOutput(); err != nil {
			t.Fatalf("MPI image: installing debootstrap: %v\n%s", err, tail(string(b), 30))
		}
	}
	began := time.Now()
	work, err := os.MkdirTemp(dir, "build-")
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		// The script unmounts /proc; make sure before removing the tree.
		_ = syscall.Unmount(filepath.Join(work, "root", "proc"), syscall.MNT_DETACH)
		os.RemoveAll(work)
	}()
	root := filepath.Join(work, "root")
	script, _ := filepath.Abs(filepath.Join("testdata", "mpi", "build-rootfs.sh"))
	var log bytes.Buffer
	build := exec.Command("bash", script, root, mpiMirror)
	build.Stdout, build.Stderr = &log, &log
	t.Logf("MPI image: building the root filesystem with debootstrap (cached afterwards in %s)", out)
	if err := build.Run(); err != nil {
		if why := mpiMirrorUnreachable(); why != "" {
			t.Skipf("MPI image: the Debian mirror %s is unreachable (%s); cannot debootstrap", mpiMirror, why)
		}
		t.Fatalf("MPI image: build-rootfs.sh failed: %v\n%s", err, tail(log.String(), 40))
	}
	built := time.Since(began)
	tmp := filepath.Join(work, "rootfs.tar.gz")
	pack := exec.Command("sh", "-c", `tar --numeric-owner --one-file-system -C "$1" --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -cf - . | gzip -1 >"$2"`,
		"sh", root, tmp)
	if b, err := pack.CombinedOutput(); err != nil {
		t.Fatalf("MPI image: packing the root filesystem: %v\n%s", err, b)
	}
	if err := os.Rename(tmp, out); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(out)
	t.Logf("FIGURE MPI image: cold build %v (debootstrap and compile %v), %.0f MiB compressed; later runs use the cache",
		time.Since(began).Round(time.Second), built.Round(time.Second), float64(fi.Size())/(1<<20))
	return out
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// buildNetcheck builds testdata/mpi/netcheck as a static binary.
func buildNetcheck(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "netcheck")
	build := exec.Command("go", "build", "-o", bin, "./testdata/mpi/netcheck")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building netcheck: %v\n%s", err, b)
	}
	return bin
}

// mpiImage is the MPI test image: the cached root filesystem as one layer,
// netcheck (built now, at netcheckBin) as a second, running as root in
// /opt/mpi with no sshd.
func mpiImage(t *testing.T, netcheckBin string) v1.Image {
	t.Helper()
	base, err := tarball.LayerFromFile(mpiRootfs(t))
	if err != nil {
		t.Fatalf("MPI image layer: %v", err)
	}
	nb, err := os.ReadFile(netcheckBin)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	_ = tw.WriteHeader(&tar.Header{Name: "opt/mpi/netcheck", Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(nb))})
	_, _ = tw.Write(nb)
	_ = tw.Close()
	top, err := tarball.LayerFromReader(bytes.NewReader(buf.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, base, top)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", "amd64"
	cfg.Config.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	cfg.Config.WorkingDir = mpiDir
	cfg.Config.Cmd = []string{"/bin/sh"}
	if img, err = mutate.ConfigFile(img, cfg); err != nil {
		t.Fatal(err)
	}
	return img
}

// pushImage writes img as ref to a registry reached from host h's network
// namespace.
func pushImage(t *testing.T, h *testbed.Host, img v1.Image, ref string) {
	t.Helper()
	tag, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{DialContext: h.DialContext}
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := remote.Write(tag, img, remote.WithTransport(tr), remote.WithContext(ctx)); err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("pushing %s: took over 5 minutes", ref)
		}
		t.Fatalf("pushing %s: %v", ref, err)
	}
}

// TestMPIImage builds (or finds in the cache) the MPI image's root
// filesystem and checks that the programs in it run, without corral: in a
// chroot, three ranks of allreduce under mpirun.
func TestMPIImage(t *testing.T) {
	tgz := mpiRootfs(t)
	dir := t.TempDir()
	if b, err := exec.Command("tar", "-xzf", tgz, "-C", dir).CombinedOutput(); err != nil {
		t.Fatalf("unpacking %s: %v\n%s", tgz, err, b)
	}
	for _, p := range []string{"usr/sbin/sshd"} {
		if _, err := os.Lstat(filepath.Join(dir, p)); err == nil {
			t.Errorf("the MPI image has /%s; it must have no ssh server", p)
		}
	}
	if err := syscall.Mount("proc", filepath.Join(dir, "proc"), "proc", 0, ""); err != nil {
		t.Fatalf("mounting proc in the chroot: %v", err)
	}
	defer syscall.Unmount(filepath.Join(dir, "proc"), syscall.MNT_DETACH)
	cmd := exec.Command("chroot", dir, "sh", "-c", "cd /opt/mpi && mpirun --oversubscribe -np 3 ./allreduce")
	cmd.Env = []string{"PATH=/usr/bin:/bin", "OMPI_ALLOW_RUN_AS_ROOT=1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1", "HOME=/root"}
	b, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("mpirun in the chroot: %v\n%s", err, b)
	}
	for r := range 3 {
		if want := fmt.Sprintf("allreduce sum=6 size=3 rank=%d ", r); !strings.Contains(string(b), want) {
			t.Errorf("mpirun output lacks %q:\n%s", want, b)
		}
	}
}
