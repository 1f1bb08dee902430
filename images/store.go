// Package images is the agent's OCI image store: it pulls images from
// registries, caches their layer blobs by digest and unpacks each image once
// into a root filesystem directory that every kernel using the image shares.
//
// Layout under the store directory:
//
//	index.json               the pulled images (survives restarts)
//	blobs/sha256/<hex>       compressed layer blobs, verified by digest
//	rootfs/<hex>/            unpacked images, by image manifest digest
//	tmp/                     downloads and unpacks in progress (emptied at start)
//	lock                     held (flock) while a Store has the directory open
package images

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// Image is an image in the store, unpacked and ready to run.
type Image struct {
	// Ref is the normalised reference the image was pulled as.
	Ref string `json:"ref"`
	// Digest is the digest of the image manifest (for an index, the manifest
	// of the platform chosen from it).
	Digest string `json:"digest"`
	// Size is the total size of the compressed layers, in bytes.
	Size int64 `json:"size"`
	// UnpackedSize is the size of the files of the root filesystem, in
	// bytes (0 for images pulled by agents that did not count it).
	UnpackedSize int64       `json:"unpacked_size"`
	Config       ImageConfig `json:"config"`
	// RootFS is the unpacked root filesystem, shared by every kernel that
	// uses the image: callers must treat it as read-only (mount an overlay
	// or copy it).
	RootFS   string    `json:"rootfs"`
	PulledAt time.Time `json:"pulled_at"`
}

// ImageConfig is the part of the OCI image configuration a runtime needs to
// start the image's process.
type ImageConfig struct {
	Entrypoint []string `json:"entrypoint,omitempty"`
	Cmd        []string `json:"cmd,omitempty"`
	Env        []string `json:"env,omitempty"`
	WorkingDir string   `json:"working_dir,omitempty"`
	User       string   `json:"user,omitempty"`
	// Labels are the image's labels (structs.LabelServicePorts declares
	// its apps).
	Labels map[string]string `json:"labels,omitempty"`
}

func (c ImageConfig) clone() ImageConfig {
	c.Entrypoint = slices.Clone(c.Entrypoint)
	c.Cmd = slices.Clone(c.Cmd)
	c.Env = slices.Clone(c.Env)
	c.Labels = maps.Clone(c.Labels)
	return c
}

// Progress reports how far a Pull has got. BytesDone never decreases and
// reaches BytesTotal (the sum of the compressed layer sizes) when every
// layer is in the cache; Layer (1-based) and Digest name the layer the
// update is about, out of Layers.
type Progress struct {
	Ref        string
	Digest     string
	BytesDone  int64
	BytesTotal int64
	Layer      int
	Layers     int
}

// Option configures a Store.
type Option func(*options) error

type options struct {
	dockerConfig string
	attempts     int
	backoff      time.Duration
	logger       *slog.Logger
	insecure     map[string]bool
	platform     v1.Platform
	jobs         int
	policy       RegistryPolicy
	maxBytes     int64
	maxFiles     int
}

// Default limits of an unpacked image (see WithUnpackLimits).
const (
	DefaultMaxImageSize  = 50 << 30
	DefaultMaxImageFiles = 1_000_000
)

// WithDefaultRegistryPolicy sets the registry policy of pulls whose
// context carries none (see WithRegistryPolicy). The default allows
// registries at public addresses only. Its AllowLoopback, AlsoAllowed and
// Hint apply to every pull.
func WithDefaultRegistryPolicy(p RegistryPolicy) Option {
	return func(o *options) error {
		for _, list := range [][]string{p.Allowed, p.AlsoAllowed} {
			for i, e := range list {
				n, err := CheckRegistryEntry(e)
				if err != nil {
					return err
				}
				list[i] = n
			}
		}
		o.policy = p
		return nil
	}
}

// WithUnpackLimits bounds what one image may unpack to: maxBytes of
// regular file content in all and maxFiles entries (defaults
// DefaultMaxImageSize and DefaultMaxImageFiles). A pull that would go
// beyond either fails with ErrImageTooLarge, and its partial root
// filesystem is removed.
func WithUnpackLimits(maxBytes int64, maxFiles int) Option {
	return func(o *options) error {
		if maxBytes <= 0 || maxFiles <= 0 {
			return fmt.Errorf("unpack limits must be positive, got %d bytes and %d files", maxBytes, maxFiles)
		}
		o.maxBytes, o.maxFiles = maxBytes, maxFiles
		return nil
	}
}

// WithDockerConfig reads registry credentials from a docker config.json
// ("auths", and "credsStore"/"credHelpers" if their helpers are installed).
// Without it, pulls are anonymous.
func WithDockerConfig(path string) Option {
	return func(o *options) error {
		if path == "" {
			return errors.New("docker config path is empty")
		}
		o.dockerConfig = path
		return nil
	}
}

// WithRetries sets how many attempts a registry request gets in all when
// the registry cannot be reached or answers with a transient error (default
// 3), and the wait before the second attempt, doubled after each further
// failure (default 1s).
func WithRetries(attempts int, backoff time.Duration) Option {
	return func(o *options) error {
		if attempts < 1 {
			return fmt.Errorf("retries: need at least 1 attempt, got %d", attempts)
		}
		if backoff < 0 {
			return fmt.Errorf("retries: negative backoff %s", backoff)
		}
		o.attempts, o.backoff = attempts, backoff
		return nil
	}
}

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option {
	return func(o *options) error {
		if l != nil {
			o.logger = l
		}
		return nil
	}
}

// WithInsecureRegistries lists registries (host or host:port) spoken to
// over plain HTTP. Loopback, localhost and RFC 1918 addresses use plain
// HTTP without being listed.
func WithInsecureRegistries(registries ...string) Option {
	return func(o *options) error {
		for _, r := range registries {
			if _, err := name.NewRegistry(r); err != nil {
				return fmt.Errorf("insecure registry %q: %w", r, err)
			}
			o.insecure[r] = true
		}
		return nil
	}
}

// WithPlatform sets the platform picked from multi-platform images, as
// "os/arch[/variant]" (default "linux/" + runtime.GOARCH).
func WithPlatform(platform string) Option {
	return func(o *options) error {
		p, err := v1.ParsePlatform(platform)
		if err != nil || p.OS == "" || p.Architecture == "" {
			return fmt.Errorf("platform %q: want os/arch[/variant], e.g. linux/amd64", platform)
		}
		o.platform = *p
		return nil
	}
}

// Store pulls images, caches blobs by digest, and unpacks them into rootfs
// directories shared by kernels. It is safe for concurrent use; one
// directory is used by one Store at a time.
type Store struct {
	dir   string
	opts  options
	log   *slog.Logger
	popts []remote.Option
	lock  *os.File

	locks keyedMutex

	mu      sync.Mutex
	puller  *remote.Puller     // caches authentication per repository
	images  map[string]*record // by normalised ref
	flights map[string]*flight // pulls in progress, by normalised ref
	pinned  map[string]int     // digest hex of blobs and rootfs that pulls in progress use
}

// record is an image as kept in the index.
type record struct {
	Ref        string      `json:"ref"`
	Repo       string      `json:"repo"`
	Digest     string      `json:"digest"`
	RepoDigest string      `json:"repo_digest"` // what the ref resolved to (an index or the manifest)
	Size       int64       `json:"size"`
	Unpacked   int64       `json:"unpacked_size,omitempty"`
	Config     ImageConfig `json:"config"`
	Layers     []string    `json:"layers"`
	PulledAt   time.Time   `json:"pulled_at"`
}

type indexFile struct {
	Version int       `json:"version"`
	Images  []*record `json:"images"`
}

const indexVersion = 1

var hexDigest = regexp.MustCompile(`^[a-f0-9]{64}$`)

// digestHex returns the hex part of a sha256 digest, or an error for any
// other algorithm or a malformed digest (it becomes a file name).
func digestHex(d string) (string, error) {
	h, err := v1.NewHash(d)
	if err != nil || h.Algorithm != "sha256" || !hexDigest.MatchString(h.Hex) {
		return "", fmt.Errorf("unsupported digest %q: only sha256 is supported", d)
	}
	return h.Hex, nil
}

// NewStore opens (creating it if needed) the image store in dir, e.g.
// <agent data dir>/images. Images pulled by an earlier Store in the same
// directory are available again.
func NewStore(dir string, opts ...Option) (*Store, error) {
	o := options{
		attempts: 3,
		backoff:  time.Second,
		logger:   slog.Default(),
		insecure: map[string]bool{},
		platform: v1.Platform{OS: "linux", Architecture: runtime.GOARCH},
		jobs:     3,
		maxBytes: DefaultMaxImageSize,
		maxFiles: DefaultMaxImageFiles,
	}
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, fmt.Errorf("image store: %w", err)
		}
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("image store: %w", err)
	}
	s := &Store{
		dir:     dir,
		opts:    o,
		log:     o.logger.With("component", "images"),
		images:  map[string]*record{},
		flights: map[string]*flight{},
		pinned:  map[string]int{},
	}
	for _, d := range []string{dir, s.blobDir(), s.rootfsDir()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("image store: %w", err)
		}
	}
	if err := s.lockDir(); err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			s.lock.Close()
		}
	}()
	// Whatever is in tmp is from a crash: half downloads, half unpacks.
	if err := os.RemoveAll(s.tmpDir()); err != nil {
		return nil, fmt.Errorf("image store: clean %s: %w", s.tmpDir(), err)
	}
	if err := os.MkdirAll(s.tmpDir(), 0o700); err != nil {
		return nil, fmt.Errorf("image store: %w", err)
	}
	// Every connection to a registry, or to where it redirects, goes
	// through the registry policy.
	tr := remote.DefaultTransport.(*http.Transport).Clone()
	tr.DialContext = s.dialContext
	popts := []remote.Option{
		remote.WithTransport(tr),
		remote.WithPlatform(o.platform),
		remote.WithUserAgent("corral-agent"),
		// Retries are ours (bounded, logged, classified): none below.
		remote.WithRetryBackoff(remote.Backoff{Steps: 1}),
		remote.WithRetryPredicate(func(error) bool { return false }),
	}
	if o.dockerConfig != "" {
		popts = append(popts, remote.WithAuthFromKeychain(dockerConfigKeychain{path: o.dockerConfig}))
	}
	s.popts = popts
	if s.puller, err = remote.NewPuller(popts...); err != nil {
		return nil, fmt.Errorf("image store: %w", err)
	}
	if err := s.loadIndex(); err != nil {
		return nil, err
	}
	ok = true
	return s, nil
}

// Close releases the store directory. Pulls still in progress may fail.
func (s *Store) Close() error {
	return s.lock.Close()
}

func (s *Store) blobDir() string   { return filepath.Join(s.dir, "blobs", "sha256") }
func (s *Store) rootfsDir() string { return filepath.Join(s.dir, "rootfs") }
func (s *Store) tmpDir() string    { return filepath.Join(s.dir, "tmp") }
func (s *Store) indexPath() string { return filepath.Join(s.dir, "index.json") }

func (s *Store) blobPath(hex string) string   { return filepath.Join(s.blobDir(), hex) }
func (s *Store) rootfsPath(hex string) string { return filepath.Join(s.rootfsDir(), hex) }

func (s *Store) lockDir() error {
	f, err := os.OpenFile(filepath.Join(s.dir, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("image store: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return fmt.Errorf("image store %s is in use by another store (another agent process?): stop it or use another data dir", s.dir)
		}
		return fmt.Errorf("image store: lock %s: %w", s.dir, err)
	}
	s.lock = f
	return nil
}

// loadIndex reads index.json, drops records whose root filesystem is gone
// and removes root filesystems no record refers to (left by a crash
// between unpacking and recording).
func (s *Store) loadIndex() error {
	b, err := os.ReadFile(s.indexPath())
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("image store: %w", err)
	}
	if err == nil {
		var idx indexFile
		if err := json.Unmarshal(b, &idx); err != nil {
			return fmt.Errorf("image store: %s is corrupt (%v): move it away to start with an empty store", s.indexPath(), err)
		}
		if idx.Version != indexVersion {
			return fmt.Errorf("image store: %s has version %d, this agent reads version %d", s.indexPath(), idx.Version, indexVersion)
		}
		for _, r := range idx.Images {
			hex, err := digestHex(r.Digest)
			if err != nil {
				s.log.Warn("dropping image with a bad digest from the index", "ref", r.Ref, "error", err)
				continue
			}
			if _, err := os.Stat(s.rootfsPath(hex)); err != nil {
				s.log.Warn("dropping image whose root filesystem is missing", "ref", r.Ref, "digest", r.Digest)
				continue
			}
			s.images[r.Ref] = r
		}
	}
	used := map[string]bool{}
	for _, r := range s.images {
		hex, _ := digestHex(r.Digest)
		used[hex] = true
	}
	entries, err := os.ReadDir(s.rootfsDir())
	if err != nil {
		return fmt.Errorf("image store: %w", err)
	}
	for _, e := range entries {
		if !used[e.Name()] {
			s.log.Info("removing unrecorded root filesystem", "dir", e.Name())
			if err := s.removeTree(s.rootfsPath(e.Name())); err != nil {
				return fmt.Errorf("image store: %w", err)
			}
		}
	}
	return nil
}

// saveIndexLocked writes index.json atomically. s.mu must be held.
func (s *Store) saveIndexLocked() error {
	idx := indexFile{Version: indexVersion}
	for _, r := range s.images {
		idx.Images = append(idx.Images, r)
	}
	sort.Slice(idx.Images, func(i, j int) bool { return idx.Images[i].Ref < idx.Images[j].Ref })
	b, err := json.MarshalIndent(idx, "", "  ")
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(s.dir, "index-*.json")
	if err != nil {
		return fmt.Errorf("save image index: %w", err)
	}
	defer os.Remove(f.Name())
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), s.indexPath())
	}
	if err != nil {
		return fmt.Errorf("save image index: %w", err)
	}
	return syncDir(s.dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func (s *Store) image(r *record) *Image {
	hex, _ := digestHex(r.Digest)
	return &Image{
		Ref:          r.Ref,
		Digest:       r.Digest,
		Size:         r.Size,
		UnpackedSize: r.Unpacked,
		Config:       r.Config.clone(),
		RootFS:       s.rootfsPath(hex),
		PulledAt:     r.PulledAt,
	}
}

// lookupLocked finds the record for a parsed reference: by its normalised
// name, or for a digest reference by any record of the same repository
// whose manifest (or index) has that digest. s.mu must be held.
func (s *Store) lookupLocked(ref name.Reference) *record {
	if r := s.images[ref.Name()]; r != nil {
		return r
	}
	d, ok := ref.(name.Digest)
	if !ok {
		return nil
	}
	var found *record
	for _, r := range s.images {
		if r.Repo == d.Context().Name() && (r.Digest == d.DigestStr() || r.RepoDigest == d.DigestStr()) {
			if found == nil || r.Ref < found.Ref {
				found = r
			}
		}
	}
	return found
}

// List returns the images in the store, sorted by reference.
func (s *Store) List() ([]*Image, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*Image, 0, len(s.images))
	for _, r := range s.images {
		out = append(out, s.image(r))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Ref < out[j].Ref })
	return out, nil
}

// Get returns a pulled image by reference (tag or digest) without
// contacting the registry; the error wraps ErrImageNotFound if it is not in
// the store.
func (s *Store) Get(ref string) (*Image, error) {
	r, err := s.parse(ref)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	rec := s.lookupLocked(r)
	if rec == nil {
		return nil, fmt.Errorf("%w: %s is not in the local store (pull it first)", ErrImageNotFound, r.Name())
	}
	return s.image(rec), nil
}

// Remove deletes an image from the store: its record, its root filesystem
// unless another reference uses the same image, and the layer blobs no
// remaining image uses. Callers must make sure no kernel still runs on its
// RootFS.
func (s *Store) Remove(ref string) error {
	r, err := s.parse(ref)
	if err != nil {
		return err
	}
	s.mu.Lock()
	rec := s.lookupLocked(r)
	if rec == nil {
		s.mu.Unlock()
		return fmt.Errorf("remove image: %w: %s is not in the local store", ErrImageNotFound, r.Name())
	}
	delete(s.images, rec.Ref)
	err = s.saveIndexLocked()
	s.mu.Unlock()
	if err != nil {
		return err
	}
	s.log.Info("removed image", "ref", rec.Ref, "digest", rec.Digest)
	return s.collect([]*record{rec})
}

// Prune removes every image for which keep returns false (see Remove),
// then deletes root filesystems and blobs that no image refers to.
func (s *Store) Prune(keep func(*Image) bool) error {
	// keep runs without the lock held: it may call Get or List.
	s.mu.Lock()
	all := make([]*record, 0, len(s.images))
	for _, r := range s.images {
		all = append(all, r)
	}
	s.mu.Unlock()
	var drop []*record
	for _, r := range all {
		if !keep(s.image(r)) {
			drop = append(drop, r)
		}
	}
	s.mu.Lock()
	var gone []*record
	for _, r := range drop {
		if s.images[r.Ref] == r {
			gone = append(gone, r)
			delete(s.images, r.Ref)
		}
	}
	var err error
	if len(gone) > 0 {
		err = s.saveIndexLocked()
	}
	s.mu.Unlock()
	if err != nil {
		return err
	}
	for _, r := range gone {
		s.log.Info("pruned image", "ref", r.Ref, "digest", r.Digest)
	}
	if err := s.collect(gone); err != nil {
		return err
	}
	return s.collectBlobs(nil)
}

// collect removes the root filesystems and blobs of removed records that
// no remaining record and no pull in progress uses.
func (s *Store) collect(gone []*record) error {
	var errs []error
	for _, r := range gone {
		hex, err := digestHex(r.Digest)
		if err != nil {
			continue
		}
		// Wait for a pull unpacking the same image, then decide.
		unlock, err := s.locks.lock(context.Background(), "rootfs/"+hex)
		if err != nil {
			return err
		}
		if !s.digestInUse(hex) {
			if err := s.removeTree(s.rootfsPath(hex)); err != nil {
				errs = append(errs, err)
			}
		}
		unlock()
	}
	var blobs []string
	for _, r := range gone {
		blobs = append(blobs, r.Layers...)
	}
	if err := s.collectBlobs(blobs); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// digestInUse reports whether a record or a pull in progress uses the
// image or blob with this digest hex.
func (s *Store) digestInUse(hex string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pinned[hex] > 0 {
		return true
	}
	for _, r := range s.images {
		if h, _ := digestHex(r.Digest); h == hex {
			return true
		}
		for _, l := range r.Layers {
			if h, _ := digestHex(l); h == hex {
				return true
			}
		}
	}
	return false
}

// collectBlobs removes the given blobs (all cached blobs when digests is
// nil) that nothing uses.
func (s *Store) collectBlobs(digests []string) error {
	var hexes []string
	if digests == nil {
		entries, err := os.ReadDir(s.blobDir())
		if err != nil {
			return err
		}
		for _, e := range entries {
			hexes = append(hexes, e.Name())
		}
	} else {
		for _, d := range digests {
			if h, err := digestHex(d); err == nil {
				hexes = append(hexes, h)
			}
		}
	}
	var errs []error
	for _, hex := range hexes {
		unlock, err := s.locks.lock(context.Background(), "blob/"+hex)
		if err != nil {
			return err
		}
		if !s.digestInUse(hex) {
			if err := os.Remove(s.blobPath(hex)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
			}
		}
		unlock()
	}
	return errors.Join(errs...)
}

// removeTree removes a directory tree crash-safely: it is first moved into
// tmp (emptied at start), so no half-deleted tree is left in place.
func (s *Store) removeTree(dir string) error {
	tmp, err := os.MkdirTemp(s.tmpDir(), "remove-")
	if err != nil {
		return err
	}
	dest := filepath.Join(tmp, "tree")
	if err := os.Rename(dir, dest); err != nil {
		os.Remove(tmp)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return err
	}
	if err := os.RemoveAll(tmp); err != nil {
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	return nil
}

// getPuller returns the registry client.
func (s *Store) getPuller() *remote.Puller {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.puller
}

// resetPuller drops cached registry sessions and credentials, after a
// registry refused them.
func (s *Store) resetPuller() {
	p, err := remote.NewPuller(s.popts...)
	if err != nil {
		return
	}
	s.mu.Lock()
	s.puller = p
	s.mu.Unlock()
}

// pin marks digests as used by a pull in progress; unpin releases them.
func (s *Store) pin(hexes ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, h := range hexes {
		s.pinned[h]++
	}
}

func (s *Store) unpin(hexes ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, h := range hexes {
		if s.pinned[h]--; s.pinned[h] <= 0 {
			delete(s.pinned, h)
		}
	}
}

// parse parses ref, marking configured registries as plain HTTP.
func (s *Store) parse(ref string) (name.Reference, error) {
	r, err := parseReference(ref)
	if err != nil {
		return nil, err
	}
	if s.opts.insecure[r.Context().RegistryStr()] {
		return parseReference(ref, name.Insecure)
	}
	return r, nil
}

// keyedMutex is a set of mutexes by key whose Lock can be cancelled.
type keyedMutex struct {
	mu sync.Mutex
	m  map[string]*keyedEntry
}

type keyedEntry struct {
	ch   chan struct{}
	refs int
}

func (k *keyedMutex) lock(ctx context.Context, key string) (func(), error) {
	k.mu.Lock()
	if k.m == nil {
		k.m = map[string]*keyedEntry{}
	}
	e := k.m[key]
	if e == nil {
		e = &keyedEntry{ch: make(chan struct{}, 1)}
		k.m[key] = e
	}
	e.refs++
	k.mu.Unlock()
	release := func() {
		k.mu.Lock()
		if e.refs--; e.refs == 0 {
			delete(k.m, key)
		}
		k.mu.Unlock()
	}
	select {
	case e.ch <- struct{}{}:
		return func() { <-e.ch; release() }, nil
	case <-ctx.Done():
		release()
		return nil, ctx.Err()
	}
}
