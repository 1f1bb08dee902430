package images

import (
	"archive/tar"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

var testConfig = v1.Config{
	Entrypoint: []string{"/bin/tool"},
	Cmd:        []string{"--serve", "8080"},
	Env:        []string{"PATH=/usr/bin:/bin", "LANG=C.UTF-8"},
	WorkingDir: "/home/user",
	User:       "1000:1000",
}

// baseLayer has files, dirs, symlinks, a hardlink, a fifo and a device.
func baseLayer(t testing.TB) v1.Layer {
	owned := file("home/user/notes.txt", 0o600, "private\n")
	owned.Uid, owned.Gid = 1000, 1001
	home := dir("home/user/", 0o700)
	home.Uid, home.Gid = 1000, 1001
	dev := entry{Header: tar.Header{Typeflag: tar.TypeChar, Name: "dev/null", Mode: 0o666, Devmajor: 1, Devminor: 3}}
	fifo := entry{Header: tar.Header{Typeflag: tar.TypeFifo, Name: "run/pipe", Mode: 0o620}}
	return tarLayer(t,
		dir("bin/", 0o755),
		file("bin/tool", 0o4755, "#!/bin/sh\necho tool\n"),
		hardlink("bin/tool-link", "bin/tool"),
		symlink("bin/sh", "/bin/busybox"),
		dir("etc/", 0o755),
		file("etc/hostname", 0o644, "corral\n"),
		file("etc/gone.conf", 0o644, "to be deleted\n"),
		dir("home/", 0o755),
		home,
		owned,
		dir("usr/lib/", 0o755),
		file("usr/lib/libc.so", 0o755, "ELF"),
		symlink("lib", "usr/lib"),
		dir("old/", 0o755),
		file("old/a", 0o644, "a"),
		file("old/b", 0o644, "b"),
		dir("opq/", 0o755),
		file("opq/x", 0o644, "x"),
		dir("opq/sub/", 0o755),
		file("opq/sub/y", 0o644, "y"),
		dir("dev/", 0o755),
		dev,
		dir("run/", 0o755),
		fifo,
		file("replace-me", 0o644, "file first"),
		dir("tmp/", 0o1777),
	)
}

// topLayer deletes, makes opaque and replaces things of baseLayer.
func topLayer(t testing.TB) v1.Layer {
	return tarLayer(t,
		whiteout("etc/.wh.gone.conf"),
		dir("old/", 0o755),
		whiteout("old/.wh.a"),
		file("opq/new", 0o644, "new"),
		dir("opq/", 0o750),
		whiteout("opq/.wh..wh..opq"),
		file("bin/sh", 0o755, "now a file"),
		dir("replace-me/", 0o755),
		file("replace-me/inside", 0o644, "dir now"),
		file("etc/hostname", 0o644, "corral-2\n"),
	)
}

func TestPullUnpacksLayers(t *testing.T) {
	reg := newTestRegistry(t)
	base, top := baseLayer(t), topLayer(t)
	img := imageOf(t, testConfig, base, top)
	ref := reg.ref("test/app:v1")
	reg.push(ref, img)

	dir := t.TempDir()
	s := newTestStore(t, dir)
	got, err := s.Pull(testContext(t), ref, nil)
	if err != nil {
		t.Fatal(err)
	}
	wantDigest := mustDigest(t, img)
	if got.Digest != wantDigest.String() {
		t.Errorf("Digest = %s, want %s", got.Digest, wantDigest)
	}
	if got.Ref != ref {
		t.Errorf("Ref = %q, want %q", got.Ref, ref)
	}
	if want := filepath.Join(dir, "rootfs", wantDigest.Hex); got.RootFS != want {
		t.Errorf("RootFS = %s, want %s", got.RootFS, want)
	}
	var size int64
	for _, l := range []v1.Layer{base, top} {
		n, _ := l.Size()
		size += n
	}
	if got.Size != size {
		t.Errorf("Size = %d, want %d", got.Size, size)
	}
	if got.Config.User != "1000:1000" || got.Config.WorkingDir != "/home/user" ||
		strings.Join(got.Config.Entrypoint, " ") != "/bin/tool" || strings.Join(got.Config.Cmd, " ") != "--serve 8080" ||
		len(got.Config.Env) != 2 {
		t.Errorf("Config = %+v", got.Config)
	}
	if got.PulledAt.IsZero() {
		t.Error("PulledAt is zero")
	}
	checkTree(t, got.RootFS)
}

// checkTree checks the result of baseLayer + topLayer.
func checkTree(t *testing.T, root string) {
	t.Helper()
	p := func(name string) string { return filepath.Join(root, name) }
	content := map[string]string{
		"etc/hostname":        "corral-2\n",
		"bin/tool":            "#!/bin/sh\necho tool\n",
		"bin/sh":              "now a file",
		"home/user/notes.txt": "private\n",
		"old/b":               "b",
		"opq/new":             "new",
		"replace-me/inside":   "dir now",
		"usr/lib/libc.so":     "ELF",
	}
	for name, want := range content {
		b, err := os.ReadFile(p(name))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if string(b) != want {
			t.Errorf("%s = %q, want %q", name, b, want)
		}
	}
	for _, name := range []string{"etc/gone.conf", "old/a", "opq/x", "opq/sub", "dev/null",
		"etc/.wh.gone.conf", "old/.wh.a", "opq/.wh..wh..opq"} {
		if _, err := os.Lstat(p(name)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s should not exist (err %v)", name, err)
		}
	}
	modes := map[string]fs.FileMode{
		"bin/tool":            0o755 | fs.ModeSetuid,
		"etc/hostname":        0o644,
		"home/user":           0o700 | fs.ModeDir,
		"home/user/notes.txt": 0o600,
		"opq":                 0o750 | fs.ModeDir,
		"tmp":                 0o777 | fs.ModeDir | fs.ModeSticky,
		"run/pipe":            0o620 | fs.ModeNamedPipe,
		"replace-me":          0o755 | fs.ModeDir,
	}
	for name, want := range modes {
		fi, err := os.Lstat(p(name))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if fi.Mode() != want {
			t.Errorf("%s mode = %v, want %v", name, fi.Mode(), want)
		}
	}
	if target, err := os.Readlink(p("lib")); err != nil || target != "usr/lib" {
		t.Errorf("lib -> %q (%v), want usr/lib", target, err)
	}
	a, err1 := os.Stat(p("bin/tool"))
	b, err2 := os.Stat(p("bin/tool-link"))
	if err1 != nil || err2 != nil || !os.SameFile(a, b) {
		t.Errorf("bin/tool-link is not a hardlink of bin/tool (%v, %v)", err1, err2)
	}
	if fi, err := os.Stat(p("etc/hostname")); err == nil {
		if want := time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC); !fi.ModTime().Equal(want) {
			t.Errorf("etc/hostname mtime = %v, want %v", fi.ModTime(), want)
		}
	}
	if os.Geteuid() == 0 {
		for _, name := range []string{"home/user", "home/user/notes.txt"} {
			fi, err := os.Lstat(p(name))
			if err != nil {
				continue
			}
			st := fi.Sys().(*syscall.Stat_t)
			if st.Uid != 1000 || st.Gid != 1001 {
				t.Errorf("%s owner = %d:%d, want 1000:1001", name, st.Uid, st.Gid)
			}
		}
	}
}

func TestPullUsesCache(t *testing.T) {
	reg := newTestRegistry(t)
	base := baseLayer(t)
	top := topLayer(t)
	ref := reg.ref("test/app:v1")
	reg.push(ref, imageOf(t, testConfig, base, top))

	dir := t.TempDir()
	s := newTestStore(t, dir)
	ctx := testContext(t)
	first, err := s.Pull(ctx, ref, nil)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("same tag", func(t *testing.T) {
		reg.resetCounts()
		again, err := s.Pull(ctx, ref, nil)
		if err != nil {
			t.Fatal(err)
		}
		if n := reg.totalBlobGets(); n != 0 {
			t.Errorf("second pull fetched %d blobs, want 0", n)
		}
		if again.RootFS != first.RootFS || again.Digest != first.Digest {
			t.Errorf("second pull gave %+v, want %+v", again, first)
		}
	})

	t.Run("by digest", func(t *testing.T) {
		reg.resetCounts()
		byDigest := reg.ref("test/app@" + first.Digest)
		img, err := s.Pull(ctx, byDigest, nil)
		if err != nil {
			t.Fatal(err)
		}
		if n := reg.requests.Load(); n != 0 {
			t.Errorf("pull by digest of a stored image made %d requests, want 0", n)
		}
		if img.RootFS != first.RootFS {
			t.Errorf("RootFS = %s, want %s", img.RootFS, first.RootFS)
		}
	})

	t.Run("shared base layer", func(t *testing.T) {
		reg.resetCounts()
		extra := tarLayer(t, file("extra.txt", 0o644, "extra"))
		ref2 := reg.ref("test/other:v2")
		reg.push(ref2, imageOf(t, testConfig, base, extra))
		reg.resetCounts()
		img, err := s.Pull(ctx, ref2, nil)
		if err != nil {
			t.Fatal(err)
		}
		if n := reg.blobGetCount(mustDigest(t, base)); n != 0 {
			t.Errorf("cached base layer fetched %d times", n)
		}
		if n := reg.blobGetCount(mustDigest(t, extra)); n != 1 {
			t.Errorf("new layer fetched %d times, want 1", n)
		}
		if img.RootFS == first.RootFS {
			t.Error("different images share a RootFS")
		}
		if b, err := os.ReadFile(filepath.Join(img.RootFS, "extra.txt")); err != nil || string(b) != "extra" {
			t.Errorf("extra.txt = %q, %v", b, err)
		}
	})

	t.Run("restart", func(t *testing.T) {
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		s2 := newTestStore(t, dir)
		img, err := s2.Get(ref)
		if err != nil {
			t.Fatal(err)
		}
		if img.RootFS != first.RootFS || img.Digest != first.Digest || img.Config.User != "1000:1000" {
			t.Errorf("after restart Get = %+v, want %+v", img, first)
		}
		list, err := s2.List()
		if err != nil {
			t.Fatal(err)
		}
		if len(list) != 2 {
			t.Errorf("List has %d images, want 2", len(list))
		}
		reg.resetCounts()
		if _, err := s2.Pull(ctx, ref, nil); err != nil {
			t.Fatal(err)
		}
		if n := reg.totalBlobGets(); n != 0 {
			t.Errorf("pull after restart fetched %d blobs, want 0", n)
		}
	})
}

func TestConcurrentPullsShareOneDownload(t *testing.T) {
	reg := newTestRegistry(t)
	base, top := baseLayer(t), topLayer(t)
	ref := reg.ref("test/app:v1")
	reg.push(ref, imageOf(t, testConfig, base, top))

	s := newTestStore(t, "")
	hit := reg.closeGate()

	const pullers = 6
	ctx := testContext(t)
	var wg sync.WaitGroup
	results := make([]*Image, pullers)
	errs := make([]error, pullers)
	for i := range pullers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = s.Pull(ctx, ref, func(Progress) {})
		}()
	}
	select {
	case <-hit:
	case <-ctx.Done():
		t.Fatal("no blob request reached the registry")
	}
	// Let every Pull join the flight before the download goes on.
	key, _ := ParseReference(ref)
	deadline := time.Now().Add(10 * time.Second)
	for {
		s.mu.Lock()
		n := 0
		if f := s.flights[key]; f != nil {
			n = f.waiters
		}
		s.mu.Unlock()
		if n == pullers {
			break
		}
		if time.Now().After(deadline) {
			reg.openGate()
			wg.Wait()
			t.Fatalf("%d of %d pulls joined the flight", n, pullers)
		}
		time.Sleep(time.Millisecond)
	}
	reg.openGate()
	wg.Wait()

	for i := range pullers {
		if errs[i] != nil {
			t.Fatalf("pull %d: %v", i, errs[i])
		}
		if results[i].RootFS != results[0].RootFS {
			t.Errorf("pull %d RootFS %s, pull 0 %s", i, results[i].RootFS, results[0].RootFS)
		}
	}
	for _, l := range []v1.Layer{base, top} {
		if n := reg.blobGetCount(mustDigest(t, l)); n != 1 {
			t.Errorf("layer %s fetched %d times, want 1", mustDigest(t, l), n)
		}
	}
}

func TestCancelledPullStopsWhenNobodyWaits(t *testing.T) {
	reg := newTestRegistry(t)
	ref := reg.ref("test/app:v1")
	reg.push(ref, imageOf(t, testConfig, baseLayer(t)))
	s := newTestStore(t, "")

	hit := reg.closeGate()
	ctx, cancel := context.WithCancel(testContext(t))
	done := make(chan error, 1)
	go func() {
		_, err := s.Pull(ctx, ref, nil)
		done <- err
	}()
	<-hit
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled pull: %v, want context.Canceled", err)
	}
	reg.openGate()
	// A new pull starts afresh and succeeds.
	if _, err := s.Pull(testContext(t), ref, nil); err != nil {
		t.Fatal(err)
	}
}

func TestPullProgress(t *testing.T) {
	reg := newTestRegistry(t)
	big := func(name string, n int) v1.Layer {
		b := make([]byte, n)
		rand.Read(b)
		return tarLayer(t, file(name, 0o644, string(b)))
	}
	layers := []v1.Layer{big("a.bin", 3<<20), big("b.bin", 2<<20), big("c.bin", 1<<20)}
	ref := reg.ref("test/big:v1")
	reg.push(ref, imageOf(t, testConfig, layers...))
	var total int64
	for _, l := range layers {
		n, _ := l.Size()
		total += n
	}

	s := newTestStore(t, "")
	var events []Progress
	img, err := s.Pull(testContext(t), ref, func(p Progress) { events = append(events, p) })
	if err != nil {
		t.Fatal(err)
	}
	if len(events) < 4 {
		t.Fatalf("got %d progress events, want several: %+v", len(events), events)
	}
	var last int64
	for i, e := range events {
		if e.BytesDone < last {
			t.Errorf("event %d: BytesDone went back from %d to %d", i, last, e.BytesDone)
		}
		last = e.BytesDone
		if e.BytesTotal != total || e.Layers != len(layers) || e.Layer < 0 || e.Layer > len(layers) || e.Ref != img.Ref {
			t.Errorf("event %d: %+v (total %d)", i, e, total)
		}
	}
	if final := events[len(events)-1]; final.BytesDone != total {
		t.Errorf("last event %+v does not reach the total %d", final, total)
	}

	// A pull that finds everything in place still reports completion.
	events = nil
	if _, err := s.Pull(testContext(t), ref, func(p Progress) { events = append(events, p) }); err != nil {
		t.Fatal(err)
	}
	if len(events) == 0 || events[len(events)-1].BytesDone != total {
		t.Errorf("cached pull progress %+v, want completion at %d", events, total)
	}
}

func TestPullNotFound(t *testing.T) {
	reg := newTestRegistry(t)
	reg.push(reg.ref("test/app:v1"), imageOf(t, testConfig, baseLayer(t)))
	s := newTestStore(t, "")
	for _, tc := range []struct{ ref, answer string }{
		{reg.ref("test/app:missing"), "MANIFEST_UNKNOWN"},
		{reg.ref("test/nothing:v1"), "NAME_UNKNOWN"},
	} {
		_, err := s.Pull(testContext(t), tc.ref, nil)
		if !errors.Is(err, ErrImageNotFound) {
			t.Fatalf("pull %s: %v, want ErrImageNotFound", tc.ref, err)
		}
		for _, want := range []string{tc.ref, tc.answer} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not mention %q", err, want)
			}
		}
	}
	if _, err := s.Get(reg.ref("test/app:v1")); !errors.Is(err, ErrImageNotFound) {
		t.Errorf("Get of an image never pulled: %v, want ErrImageNotFound", err)
	}
}

func TestPullUnreachableRegistry(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now

	h := &recordingHandler{}
	s := newTestStore(t, "", WithRetries(3, time.Millisecond), WithLogger(slog.New(h)))
	start := time.Now()
	_, err = s.Pull(testContext(t), addr+"/test/app:v1", nil)
	if !errors.Is(err, ErrRegistryUnreachable) {
		t.Fatalf("pull from a closed port: %v, want ErrRegistryUnreachable", err)
	}
	for _, want := range []string{addr, "3 times", "connection refused"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if n := h.count("registry request failed; retrying"); n != 2 {
		t.Errorf("%d retries logged, want 2", n)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("took %s", d)
	}
}

func TestPullRetriesTransientErrors(t *testing.T) {
	reg := newTestRegistry(t)
	ref := reg.ref("test/app:v1")
	reg.push(ref, imageOf(t, testConfig, baseLayer(t)))
	s := newTestStore(t, "", WithRetries(4, time.Millisecond))
	reg.mu.Lock()
	reg.failNext = 2
	reg.mu.Unlock()
	if _, err := s.Pull(testContext(t), ref, nil); err != nil {
		t.Fatalf("pull through two 503s: %v", err)
	}
}

func TestStoredImageUsedWhenRegistryDown(t *testing.T) {
	reg := newTestRegistry(t)
	ref := reg.ref("test/app:v1")
	reg.push(ref, imageOf(t, testConfig, baseLayer(t)))
	s := newTestStore(t, "")
	first, err := s.Pull(testContext(t), ref, nil)
	if err != nil {
		t.Fatal(err)
	}
	reg.srv.Close()
	again, err := s.Pull(testContext(t), ref, nil)
	if err != nil {
		t.Fatalf("pull of a stored image with the registry down: %v", err)
	}
	if again.RootFS != first.RootFS {
		t.Errorf("RootFS = %s, want %s", again.RootFS, first.RootFS)
	}
}

func TestInvalidReference(t *testing.T) {
	valid := map[string]string{
		"ubuntu":                     "index.docker.io/library/ubuntu:latest",
		"ubuntu:22.04":               "index.docker.io/library/ubuntu:22.04",
		"127.0.0.1:5000/team/app:v1": "127.0.0.1:5000/team/app:v1",
		"ghcr.io/a/b@sha256:" + strings.Repeat("ab", 32): "ghcr.io/a/b@sha256:" + strings.Repeat("ab", 32),
	}
	for in, want := range valid {
		got, err := ParseReference(in)
		if err != nil || got != want {
			t.Errorf("ParseReference(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	invalid := map[string]string{
		"":                        "empty",
		" ubuntu":                 "white space",
		"Ubuntu":                  "repository can only contain",
		"http://ghcr.io/a/b":      "URL scheme",
		"ubuntu:":                 "tag name after the colon",
		"ghcr.io/a/b@sha256:abc":  "digest",
		"ghcr.io/a/b:bad tag":     "white space",
		"ghcr.io/a/b:t@g":         "digest",
		"ghcr.io/a/b:" + "x/y//z": "repository",
	}
	s := newTestStore(t, "")
	for in, reason := range invalid {
		_, err := ParseReference(in)
		if !errors.Is(err, ErrInvalidReference) {
			t.Errorf("ParseReference(%q) = %v, want ErrInvalidReference", in, err)
			continue
		}
		if !strings.Contains(err.Error(), reason) {
			t.Errorf("ParseReference(%q) error %q does not say %q", in, err, reason)
		}
		if _, err := s.Pull(testContext(t), in, nil); !errors.Is(err, ErrInvalidReference) {
			t.Errorf("Pull(%q) = %v, want ErrInvalidReference", in, err)
		}
	}
}

func TestPlatformFromIndex(t *testing.T) {
	reg := newTestRegistry(t)
	mine := imageOf(t, v1.Config{Cmd: []string{"mine"}}, tarLayer(t, file("arch", 0o644, runtime.GOARCH)))
	otherArch := "arm64"
	if runtime.GOARCH == "arm64" {
		otherArch = "amd64"
	}
	other := imageForArch(t, otherArch, v1.Config{Cmd: []string{"other"}}, tarLayer(t, file("arch", 0o644, otherArch)))
	idx := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: other, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: otherArch}}},
		mutate.IndexAddendum{Add: mine, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: runtime.GOARCH}}},
	)
	ref := reg.ref("test/multi:v1")
	reg.pushIndex(ref, idx)
	onlyOther := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: other, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: otherArch}}})
	reg.pushIndex(reg.ref("test/foreign:v1"), onlyOther)

	s := newTestStore(t, "")
	img, err := s.Pull(testContext(t), ref, nil)
	if err != nil {
		t.Fatal(err)
	}
	if img.Digest != mustDigest(t, mine).String() {
		t.Errorf("Digest = %s, want the %s image %s", img.Digest, runtime.GOARCH, mustDigest(t, mine))
	}
	if b, _ := os.ReadFile(filepath.Join(img.RootFS, "arch")); string(b) != runtime.GOARCH {
		t.Errorf("unpacked the %q image", b)
	}
	// The index digest finds it too.
	if _, err := s.Get(reg.ref("test/multi@" + mustDigest(t, idx).String())); err != nil {
		t.Errorf("Get by index digest: %v", err)
	}
	_, err = s.Pull(testContext(t), reg.ref("test/foreign:v1"), nil)
	if !errors.Is(err, ErrImageNotFound) || !strings.Contains(err.Error(), "variant") {
		t.Errorf("pull of an index without this platform: %v, want ErrImageNotFound naming the variant", err)
	}

	// Another platform picks the other image, and refuses a single-platform
	// image built for this machine.
	so := newTestStore(t, "", WithPlatform("linux/"+otherArch))
	img, err = so.Pull(testContext(t), ref, nil)
	if err != nil {
		t.Fatal(err)
	}
	if img.Digest != mustDigest(t, other).String() {
		t.Errorf("WithPlatform(linux/%s) pulled %s, want %s", otherArch, img.Digest, mustDigest(t, other))
	}
	reg.push(reg.ref("test/single:v1"), mine)
	_, err = so.Pull(testContext(t), reg.ref("test/single:v1"), nil)
	if err == nil || !strings.Contains(err.Error(), "built for linux/"+runtime.GOARCH) {
		t.Errorf("pull of a linux/%s image for linux/%s: %v", runtime.GOARCH, otherArch, err)
	}
}

func TestDockerConfigCredentials(t *testing.T) {
	reg := newTestRegistry(t)
	ref := reg.ref("test/private:v1")
	reg.push(ref, imageOf(t, testConfig, baseLayer(t)))
	reg.mu.Lock()
	reg.basicAuth = [2]string{"alice", "s3cret"}
	reg.mu.Unlock()

	anon := newTestStore(t, "")
	if _, err := anon.Pull(testContext(t), ref, nil); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("anonymous pull from a private registry: %v, want ErrUnauthorized", err)
	}

	cfg := filepath.Join(t.TempDir(), "config.json")
	writeConfig := func(userPass string) {
		auth := base64.StdEncoding.EncodeToString([]byte(userPass))
		if err := os.WriteFile(cfg, []byte(`{"auths":{"`+reg.host+`":{"auth":"`+auth+`"}}}`), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeConfig("alice:wrong")
	s := newTestStore(t, "", WithDockerConfig(cfg))
	_, err := s.Pull(testContext(t), ref, nil)
	if !errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), "UNAUTHORIZED") {
		t.Fatalf("pull with a wrong password: %v, want ErrUnauthorized with the registry's answer", err)
	}
	// Fixed credentials are read again without a restart.
	writeConfig("alice:s3cret")
	if _, err := s.Pull(testContext(t), ref, nil); err != nil {
		t.Fatalf("pull with credentials: %v", err)
	}
}

func TestInsecureRegistriesOption(t *testing.T) {
	s := newTestStore(t, "", WithInsecureRegistries("registry.lan:5000"))
	for ref, scheme := range map[string]string{
		"registry.lan:5000/team/app:v1": "http",
		"registry.lan/team/app:v1":      "https",
		"ghcr.io/team/app:v1":           "https",
		"127.0.0.1:5000/team/app:v1":    "http",
	} {
		r, err := s.parse(ref)
		if err != nil {
			t.Fatal(err)
		}
		if got := r.Context().Scheme(); got != scheme {
			t.Errorf("%s: scheme %s, want %s", ref, got, scheme)
		}
	}
	if _, err := NewStore(t.TempDir(), WithInsecureRegistries("bad host")); err == nil {
		t.Error("a malformed insecure registry was accepted")
	}
}

func TestRemoveAndPrune(t *testing.T) {
	reg := newTestRegistry(t)
	base := baseLayer(t)
	imgA := imageOf(t, testConfig, base, topLayer(t))
	imgB := imageOf(t, testConfig, base, tarLayer(t, file("b", 0o644, "b")))
	reg.push(reg.ref("test/a:v1"), imgA)
	reg.push(reg.ref("test/a:latest"), imgA)
	reg.push(reg.ref("test/b:v1"), imgB)

	dir := t.TempDir()
	s := newTestStore(t, dir)
	ctx := testContext(t)
	var a1, a2, b *Image
	var err error
	if a1, err = s.Pull(ctx, reg.ref("test/a:v1"), nil); err != nil {
		t.Fatal(err)
	}
	if a2, err = s.Pull(ctx, reg.ref("test/a:latest"), nil); err != nil {
		t.Fatal(err)
	}
	if b, err = s.Pull(ctx, reg.ref("test/b:v1"), nil); err != nil {
		t.Fatal(err)
	}
	if a1.RootFS != a2.RootFS {
		t.Fatalf("two tags of one image got different RootFS: %s, %s", a1.RootFS, a2.RootFS)
	}
	blobs := func() int {
		entries, _ := os.ReadDir(filepath.Join(dir, "blobs", "sha256"))
		return len(entries)
	}
	if n := blobs(); n != 3 {
		t.Fatalf("%d blobs cached, want 3", n)
	}

	if err := s.Remove(reg.ref("test/a:v1")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(reg.ref("test/a:v1")); !errors.Is(err, ErrImageNotFound) {
		t.Errorf("Get after Remove: %v", err)
	}
	if _, err := os.Stat(a2.RootFS); err != nil {
		t.Errorf("RootFS still used by test/a:latest was removed: %v", err)
	}
	if err := s.Remove(reg.ref("test/a:v1")); !errors.Is(err, ErrImageNotFound) {
		t.Errorf("second Remove: %v, want ErrImageNotFound", err)
	}

	if err := s.Remove(reg.ref("test/a:latest")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(a2.RootFS); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("RootFS of a removed image still there: %v", err)
	}
	if n := blobs(); n != 2 {
		t.Errorf("%d blobs cached after removing image a, want 2 (b's)", n)
	}

	if err := s.Prune(func(img *Image) bool { return false }); err != nil {
		t.Fatal(err)
	}
	if list, _ := s.List(); len(list) != 0 {
		t.Errorf("List after Prune = %v", list)
	}
	if _, err := os.Stat(b.RootFS); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("RootFS of a pruned image still there: %v", err)
	}
	if n := blobs(); n != 0 {
		t.Errorf("%d blobs cached after Prune, want 0", n)
	}
}

func TestTagMovedKeepsOldImageByDigest(t *testing.T) {
	reg := newTestRegistry(t)
	ref := reg.ref("test/app:latest")
	old := imageOf(t, testConfig, tarLayer(t, file("version", 0o644, "1")))
	reg.push(ref, old)
	s := newTestStore(t, "")
	first, err := s.Pull(testContext(t), ref, nil)
	if err != nil {
		t.Fatal(err)
	}
	reg.push(ref, imageOf(t, testConfig, tarLayer(t, file("version", 0o644, "2"))))
	second, err := s.Pull(testContext(t), ref, nil)
	if err != nil {
		t.Fatal(err)
	}
	if second.Digest == first.Digest {
		t.Fatal("pull did not pick up the moved tag")
	}
	if b, _ := os.ReadFile(filepath.Join(second.RootFS, "version")); string(b) != "2" {
		t.Errorf("version = %q, want 2", b)
	}
	kept, err := s.Get(reg.ref("test/app@" + first.Digest))
	if err != nil {
		t.Fatalf("old image not kept by digest: %v", err)
	}
	if kept.RootFS != first.RootFS {
		t.Errorf("old image RootFS = %s, want %s", kept.RootFS, first.RootFS)
	}
}

func TestStoreDirectoryLock(t *testing.T) {
	dir := t.TempDir()
	s := newTestStore(t, dir)
	if _, err := NewStore(dir); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second store on the same dir: %v, want an in-use error", err)
	}
	s.Close()
	s2, err := NewStore(dir)
	if err != nil {
		t.Fatalf("reopen after Close: %v", err)
	}
	s2.Close()
}
