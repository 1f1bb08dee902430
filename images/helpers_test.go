package images

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// testRegistry is an in-memory registry on 127.0.0.1 (plain HTTP) that
// counts what it serves.
type testRegistry struct {
	t    testing.TB
	srv  *httptest.Server
	host string

	requests atomic.Int64

	mu        sync.Mutex
	blobGets  map[string]int // digest -> GET count
	gate      chan struct{}  // when set, blob GETs wait for it to close
	gateHit   chan struct{}  // signalled (once) when a blob GET waits at the gate
	failNext  int            // answer the next n requests with 503
	basicAuth [2]string      // user, password required when set
}

func newTestRegistry(t testing.TB) *testRegistry {
	t.Helper()
	tr := &testRegistry{t: t, blobGets: map[string]int{}}
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	tr.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tr.requests.Add(1)
		tr.mu.Lock()
		if tr.failNext > 0 {
			tr.failNext--
			tr.mu.Unlock()
			http.Error(w, "try later", http.StatusServiceUnavailable)
			return
		}
		if user := tr.basicAuth[0]; user != "" {
			u, p, ok := r.BasicAuth()
			if !ok || u != user || p != tr.basicAuth[1] {
				tr.mu.Unlock()
				w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusUnauthorized)
				io.WriteString(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`)
				return
			}
		}
		var gate chan struct{}
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/sha256:") {
			d := r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:]
			tr.blobGets[d]++
			gate = tr.gate
			if gate != nil && tr.gateHit != nil {
				close(tr.gateHit)
				tr.gateHit = nil
			}
		}
		tr.mu.Unlock()
		if gate != nil {
			<-gate
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(tr.srv.Close)
	tr.host = strings.TrimPrefix(tr.srv.URL, "http://")
	return tr
}

// closeGate makes blob GETs wait until openGate; it returns a channel
// closed when the first one waits. The gate opens at cleanup in any case,
// so a failing test does not hang on the server's shutdown.
func (tr *testRegistry) closeGate() <-chan struct{} {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.gate = make(chan struct{})
	tr.gateHit = make(chan struct{})
	tr.t.Cleanup(tr.openGate)
	return tr.gateHit
}

func (tr *testRegistry) openGate() {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if tr.gate != nil {
		close(tr.gate)
		tr.gate = nil
	}
}

// ref returns a reference to repo:tag in this registry.
func (tr *testRegistry) ref(repoTag string) string { return tr.host + "/" + repoTag }

// blobGetCount returns how often the blob with digest d was fetched.
func (tr *testRegistry) blobGetCount(d v1.Hash) int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.blobGets[d.String()]
}

func (tr *testRegistry) totalBlobGets() int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	n := 0
	for _, c := range tr.blobGets {
		n += c
	}
	return n
}

func (tr *testRegistry) resetCounts() {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.blobGets = map[string]int{}
	tr.requests.Store(0)
}

// push writes img under ref (no auth, no gate).
func (tr *testRegistry) push(ref string, img v1.Image) {
	tr.t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		tr.t.Fatal(err)
	}
	if err := remote.Write(r, img); err != nil {
		tr.t.Fatalf("push %s: %v", ref, err)
	}
}

func (tr *testRegistry) pushIndex(ref string, idx v1.ImageIndex) {
	tr.t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		tr.t.Fatal(err)
	}
	if err := remote.WriteIndex(r, idx); err != nil {
		tr.t.Fatalf("push %s: %v", ref, err)
	}
}

// entry is one tar entry of a test layer.
type entry struct {
	tar.Header
	Body string
}

func dir(name string, mode int64) entry {
	return entry{Header: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode}}
}

func file(name string, mode int64, body string) entry {
	return entry{Header: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(body))}, Body: body}
}

func symlink(name, target string) entry {
	return entry{Header: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777}}
}

func hardlink(name, target string) entry {
	return entry{Header: tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: target, Mode: 0o644}}
}

func whiteout(name string) entry { return file(name, 0o644, "") }

// tarBytes writes entries as an uncompressed tar stream.
func tarBytes(t testing.TB, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.Header
		if h.ModTime.IsZero() {
			h.ModTime = time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)
		}
		h.Format = tar.FormatPAX
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatalf("tar %s: %v", h.Name, err)
		}
		if e.Body != "" {
			if _, err := io.WriteString(tw, e.Body); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// layerOf builds a gzip-compressed layer from raw (uncompressed or
// already compressed) tar bytes.
func layerOf(t testing.TB, b []byte, opts ...tarball.LayerOption) v1.Layer {
	t.Helper()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(b)), nil
	}, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func tarLayer(t testing.TB, entries ...entry) v1.Layer {
	t.Helper()
	return layerOf(t, tarBytes(t, entries...))
}

// imageOf builds a linux image for this machine's architecture.
func imageOf(t testing.TB, cfg v1.Config, layers ...v1.Layer) v1.Image {
	t.Helper()
	return imageForArch(t, runtime.GOARCH, cfg, layers...)
}

// imageForArch builds a linux image for arch.
func imageForArch(t testing.TB, arch string, cfg v1.Config, layers ...v1.Layer) v1.Image {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", arch
	cf.Config = cfg
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func mustDigest(t testing.TB, d interface{ Digest() (v1.Hash, error) }) v1.Hash {
	t.Helper()
	h, err := d.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// newTestStore opens a store with quick retries and a quiet logger.
func newTestStore(t testing.TB, dir string, opts ...Option) *Store {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	opts = append([]Option{WithRetries(3, time.Millisecond), WithLogger(slog.New(slog.DiscardHandler)),
		WithDefaultRegistryPolicy(RegistryPolicy{AllowLoopback: true})}, opts...)
	s, err := NewStore(dir, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func testContext(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// recordingHandler is a slog handler that keeps messages.
type recordingHandler struct {
	mu   sync.Mutex
	msgs []string
}

func (h *recordingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *recordingHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.msgs = append(h.msgs, r.Message)
	return nil
}
func (h *recordingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *recordingHandler) WithGroup(string) slog.Handler      { return h }

func (h *recordingHandler) count(msg string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, m := range h.msgs {
		if m == msg {
			n++
		}
	}
	return n
}
