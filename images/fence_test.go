package images

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/klauspost/compress/gzip"
)

func TestClassifyAddr(t *testing.T) {
	cases := map[string]AddrClass{
		"127.0.0.1":        AddrLoopback,
		"127.8.9.10":       AddrLoopback,
		"::1":              AddrLoopback,
		"::ffff:127.0.0.1": AddrLoopback,
		"10.0.0.1":         AddrPrivate,
		"10.255.255.255":   AddrPrivate,
		"172.16.0.1":       AddrPrivate,
		"172.31.255.254":   AddrPrivate,
		"192.168.1.1":      AddrPrivate,
		"::ffff:10.1.2.3":  AddrPrivate,
		"64:ff9b::a00:1":   AddrPrivate,
		"64:ff9b::808:808": AddrPublic,
		"fc00::1":          AddrPrivate,
		"fd12:3456::1":     AddrPrivate,
		"169.254.169.254":  AddrLinkLocal,
		"fe80::1":          AddrLinkLocal,
		"0.0.0.0":          AddrUnspecified,
		"::":               AddrUnspecified,
		"224.0.0.1":        AddrMulticast,
		"ff02::1":          AddrMulticast,
		"ff0e::1":          AddrMulticast,
		"100.64.0.1":       AddrReserved,
		"0.1.2.3":          AddrReserved,
		"255.255.255.255":  AddrReserved,
		"8.8.8.8":          AddrPublic,
		"1.1.1.1":          AddrPublic,
		"172.15.255.255":   AddrPublic,
		"172.32.0.1":       AddrPublic,
		"192.169.0.1":      AddrPublic,
		"11.0.0.1":         AddrPublic,
		"2606:4700::1111":  AddrPublic,
		"2001:4860::8888":  AddrPublic,
	}
	for s, want := range cases {
		if got := ClassifyAddr(netip.MustParseAddr(s)); got != want {
			t.Errorf("ClassifyAddr(%s) = %s, want %s", s, got, want)
		}
	}
}

func TestRegistryPolicyCheck(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		policy   RegistryPolicy
		registry string
		ok       bool
		says     string
	}{
		{RegistryPolicy{}, "8.8.8.8", true, ""},
		{RegistryPolicy{}, "8.8.8.8:5000", true, ""},
		{RegistryPolicy{}, "127.0.0.1:5000", false, "127.0.0.1, a loopback address"},
		{RegistryPolicy{}, "[::1]:5000", false, "loopback"},
		{RegistryPolicy{}, "10.1.2.3", false, "private"},
		{RegistryPolicy{}, "169.254.169.254", false, "link-local"},
		{RegistryPolicy{}, "[fd00::1]:443", false, "private"},
		{RegistryPolicy{}, "0.0.0.0:80", false, "unspecified"},
		{RegistryPolicy{AllowLoopback: true}, "127.0.0.1:5000", true, ""},
		{RegistryPolicy{AllowLoopback: true}, "10.0.0.1:5000", false, "private"},
		{RegistryPolicy{Allowed: []string{"127.0.0.1:5000"}}, "127.0.0.1:5000", true, ""},
		{RegistryPolicy{Allowed: []string{"127.0.0.1:5000"}}, "127.0.0.1:5001", false, "not in the allow-list (allowed: 127.0.0.1:5000)"},
		{RegistryPolicy{Allowed: []string{"10.0.0.5"}}, "10.0.0.5:5000", true, ""},
		{RegistryPolicy{Allowed: []string{"8.8.8.8"}}, "1.1.1.1", false, "not in the allow-list"},
		{RegistryPolicy{AlsoAllowed: []string{"10.0.0.5:5000"}}, "10.0.0.5:5000", true, ""},
		{RegistryPolicy{AlsoAllowed: []string{"10.0.0.5:5000"}}, "8.8.8.8", true, ""},
		{RegistryPolicy{AlsoAllowed: []string{"10.0.0.5:5000"}}, "10.0.0.6:5000", false, "private"},
		{RegistryPolicy{Allowed: []string{"8.8.8.8"}, AlsoAllowed: []string{"10.0.0.5"}}, "10.0.0.5", true, ""},
		{RegistryPolicy{Allowed: []string{"docker.io"}}, "index.docker.io", true, ""},
		// A wildcard allows the names below it, still only at public addresses.
		{RegistryPolicy{Allowed: []string{"*.example.com"}}, "example.com", false, "not in the allow-list"},
		{RegistryPolicy{Allowed: []string{"*.example.com"}, Hint: "ask an admin"}, "reg.example.org", false, "allow-list (allowed: *.example.com); ask an admin"},
		// Names are resolved, and every address checked.
		{RegistryPolicy{}, "localhost:5000", false, "loopback"},
		{RegistryPolicy{Allowed: []string{"localhost:5000"}}, "localhost:5000", true, ""},
	}
	for _, c := range cases {
		err := c.policy.Check(ctx, c.registry)
		if c.ok != (err == nil) {
			t.Errorf("%+v.Check(%s) = %v, want ok=%v", c.policy, c.registry, err, c.ok)
			continue
		}
		if err != nil && (!errors.Is(err, ErrRegistryNotAllowed) || !strings.Contains(err.Error(), c.says)) {
			t.Errorf("%+v.Check(%s) = %v, want ErrRegistryNotAllowed saying %q", c.policy, c.registry, err, c.says)
		}
	}
	for _, e := range []string{"", "*", "a/b", "*.*.com", "http://x", "x y"} {
		if _, err := CheckRegistryEntry(e); err == nil {
			t.Errorf("CheckRegistryEntry(%q) accepted", e)
		}
	}
	if n, err := CheckRegistryEntry("Reg.Example.com:5000"); err != nil || n != "reg.example.com:5000" {
		t.Errorf("CheckRegistryEntry = %q, %v", n, err)
	}
}

// TestPullRefusesPrivateRegistries: a store with the default policy never
// talks to a registry on loopback, whether the pull names it directly or
// the context's policy lists another registry; naming it exactly lets it in.
func TestPullRefusesPrivateRegistries(t *testing.T) {
	reg := newTestRegistry(t)
	ref := reg.ref("fence/app:1")
	reg.push(ref, imageOf(t, v1.Config{}, tarLayer(t, file("a", 0o644, "a"))))
	reg.resetCounts()

	s, err := NewStore(t.TempDir(), WithLogger(slog.New(slog.DiscardHandler)), WithRetries(1, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := testContext(t)
	_, err = s.Pull(ctx, ref, nil)
	if !errors.Is(err, ErrRegistryNotAllowed) || !strings.Contains(err.Error(), "loopback") {
		t.Fatalf("pull from loopback: %v", err)
	}
	_, err = s.Pull(WithRegistryPolicy(ctx, RegistryPolicy{Allowed: []string{"registry.example.com"}}), ref, nil)
	if !errors.Is(err, ErrRegistryNotAllowed) || !strings.Contains(err.Error(), "allow-list (allowed: registry.example.com)") {
		t.Fatalf("pull outside the allow-list: %v", err)
	}
	if n := reg.requests.Load(); n != 0 {
		t.Fatalf("the registry got %d requests from refused pulls", n)
	}
	// The dial-time check on its own (as after a DNS answer that changed
	// since Check): a wildcard that matches passes Check only for public
	// addresses; here the dial is what refuses.
	if _, err := s.dialContext(ctx, "tcp", reg.host); !errors.Is(err, ErrRegistryNotAllowed) {
		t.Fatalf("dial to loopback: %v", err)
	}
	img, err := s.Pull(WithRegistryPolicy(ctx, RegistryPolicy{Allowed: []string{reg.host}}), ref, nil)
	if err != nil {
		t.Fatalf("pull from an exactly listed registry: %v", err)
	}
	if img.UnpackedSize != 1 {
		t.Errorf("UnpackedSize = %d, want 1", img.UnpackedSize)
	}
}

// TestTraversalReferencesRefused: path tricks never reach the registry.
func TestTraversalReferencesRefused(t *testing.T) {
	reg := newTestRegistry(t)
	s := newTestStore(t, "")
	cases := map[string]string{
		reg.host + "/a/../../v2/_catalog:1": `path component ".."`,
		reg.host + "/../x:1":                `path component ".."`,
		reg.host + "/a/%2e%2e/b:1":          "repository can only contain",
		reg.host + "/a//b:1":                "empty path component",
		reg.host + "/A/b:1":                 "repository can only contain",
		reg.host + "/a/.b:1":                `path component ".b"`,
		reg.host + "/a/b-:1":                `path component "b-"`,
		reg.host + "/a/b:.t":                `tag ".t"`,
	}
	for ref, says := range cases {
		_, err := s.Pull(testContext(t), ref, nil)
		if !errors.Is(err, ErrInvalidReference) || !strings.Contains(err.Error(), says) {
			t.Errorf("Pull(%q) = %v, want ErrInvalidReference saying %q", ref, err, says)
		}
	}
	if n := reg.requests.Load(); n != 0 {
		t.Fatalf("the registry got %d requests", n)
	}
	for _, ok := range []string{"a/b__c/d-e/f.g:v1.0-rc_1", "a/b---c:t", reg.host + "/x/y@sha256:" + strings.Repeat("0", 64)} {
		if _, err := ParseReference(ok); err != nil {
			t.Errorf("ParseReference(%q): %v", ok, err)
		}
	}
}

// zeroLayer is a gzip layer of files, each of size bytes of zeros: a
// decompression bomb (about 1000 to 1) when size is large.
func zeroLayer(t testing.TB, files int, size int64) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	tw := tar.NewWriter(zw)
	for i := range files {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("zero%d", i), Mode: 0o644, Size: size}); err != nil {
			t.Fatal(err)
		}
		if _, err := io.CopyN(tw, zeros{}, size); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return layerOf(t, buf.Bytes())
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// diskUsage sums the sizes of the regular files under dir.
func diskUsage(t *testing.T, dir string) (bytes int64, files int) {
	t.Helper()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			fi, err := d.Info()
			if err != nil {
				return err
			}
			bytes += fi.Size()
			files++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return bytes, files
}

// TestDecompressionBombAborted: a registry on loopback serves layers that
// unpack to more than the store's limit: the pull fails saying so, and
// nothing of the image stays on disk.
func TestDecompressionBombAborted(t *testing.T) {
	const limit = 64 << 20
	reg := newTestRegistry(t)
	bombs := map[string]v1.Layer{
		"bomb/many:1": zeroLayer(t, 5, 16<<20),   // 80 MiB in files below the limit
		"bomb/one:1":  zeroLayer(t, 1, 200<<20),  // one file above the limit
		"bomb/fits:1": zeroLayer(t, 3, 16<<20-1), // just under: pulls
	}
	for repo, l := range bombs {
		reg.push(reg.ref(repo), imageOf(t, v1.Config{}, l))
		if size, _ := l.Size(); size > 2<<20 {
			t.Fatalf("%s: compressed layer is %d bytes; the test wants a small bomb", repo, size)
		}
	}
	dir := t.TempDir()
	s := newTestStore(t, dir, WithUnpackLimits(limit, 100))
	baseBytes, baseFiles := diskUsage(t, dir)
	for _, repo := range []string{"bomb/many:1", "bomb/one:1"} {
		ref := reg.ref(repo)
		_, err := s.Pull(testContext(t), ref, nil)
		want := fmt.Sprintf("image %s unpacks to more than 64 MiB (agent -max-image-size)", ref)
		if !errors.Is(err, ErrImageTooLarge) || !strings.Contains(err.Error(), want) {
			t.Fatalf("pull %s: %v; want ErrImageTooLarge saying %q", repo, err, want)
		}
		if b, f := diskUsage(t, dir); b > baseBytes+4096 || f > baseFiles {
			t.Fatalf("after refusing %s the store holds %d bytes in %d files (before: %d in %d)", repo, b, f, baseBytes, baseFiles)
		}
		if _, err := s.Get(ref); !errors.Is(err, ErrImageNotFound) {
			t.Fatalf("refused image is in the store: %v", err)
		}
		for _, sub := range []string{"tmp", "rootfs"} {
			if entries, _ := os.ReadDir(filepath.Join(dir, sub)); len(entries) > 0 {
				t.Fatalf("%s holds %d entries after the refusal", sub, len(entries))
			}
		}
	}
	img, err := s.Pull(testContext(t), reg.ref("bomb/fits:1"), nil)
	if err != nil {
		t.Fatalf("image under the limit: %v", err)
	}
	if want := int64(3 * (16<<20 - 1)); img.UnpackedSize != want {
		t.Errorf("UnpackedSize = %d, want %d", img.UnpackedSize, want)
	}
	list, _ := s.List()
	if len(list) != 1 || list[0].UnpackedSize != img.UnpackedSize || list[0].Size >= img.UnpackedSize {
		t.Errorf("List = %+v", list)
	}

	// Too many files, with a store that allows few.
	many := make([]entry, 0, 30)
	for i := range 30 {
		many = append(many, file(fmt.Sprintf("f%d", i), 0o644, "x"))
	}
	reg.push(reg.ref("bomb/files:1"), imageOf(t, v1.Config{}, tarLayer(t, many...)))
	s2 := newTestStore(t, "", WithUnpackLimits(limit, 20))
	_, err = s2.Pull(testContext(t), reg.ref("bomb/files:1"), nil)
	if !errors.Is(err, ErrImageTooLarge) || !strings.Contains(err.Error(), "more than 20 files") {
		t.Fatalf("many files: %v", err)
	}
}

// TestPullRefusesRedirectsToPrivateAddresses: a registry allowed by name
// that redirects its blobs to another name on loopback (a CDN answer, or
// a DNS name that rebinds) is refused when the redirect is dialled.
func TestPullRefusesRedirectsToPrivateAddresses(t *testing.T) {
	reg := newTestRegistry(t)
	ref := reg.ref("fence/redirect:1")
	reg.push(ref, imageOf(t, v1.Config{}, tarLayer(t, file("a", 0o644, "a"))))
	_, port, _ := net.SplitHostPort(reg.host)
	hostile := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/blobs/") {
			http.Redirect(w, r, "http://localhost:"+port+r.URL.Path, http.StatusTemporaryRedirect)
			return
		}
		httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: reg.host}).ServeHTTP(w, r)
	}))
	defer hostile.Close()
	hostileHost := strings.TrimPrefix(hostile.URL, "http://")

	s, err := NewStore(t.TempDir(), WithLogger(slog.New(slog.DiscardHandler)), WithRetries(3, 0),
		WithDefaultRegistryPolicy(RegistryPolicy{AlsoAllowed: []string{hostileHost}}))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	reg.resetCounts()
	_, err = s.Pull(testContext(t), hostileHost+"/fence/redirect:1", nil)
	if !errors.Is(err, ErrRegistryNotAllowed) || errors.Is(err, ErrRegistryUnreachable) || !strings.Contains(err.Error(), "localhost:"+port+" resolves to") {
		t.Fatalf("pull redirected to loopback: %v", err)
	}
	if n := reg.totalBlobGets(); n != 0 {
		t.Fatalf("the redirect target served %d blobs", n)
	}
}
