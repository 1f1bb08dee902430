package images

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"
)

// maxBackoff caps the doubling wait between registry attempts.
const maxBackoff = 30 * time.Second

// Pull makes sure the image ref is in the store, unpacked, and returns it.
//
// Pull is idempotent: a digest reference already in the store needs no
// registry at all; for a tag, the registry is asked (one manifest HEAD)
// whether the tag still points to the stored image, and the stored image is
// used as is when the registry cannot be reached. Layer blobs already cached
// are never downloaded again, whichever image they came with. Concurrent
// Pulls of the same reference share one download; the download stops when
// every caller waiting for it has given up (ctx).
//
// progress, if not nil, is called with monotone byte counts up to the
// total; calls are serialised and must not block for long or call Pull.
//
// Errors wrap ErrInvalidReference, ErrImageNotFound, ErrUnauthorized,
// ErrRegistryUnreachable (after the configured attempts) or ErrInvalidLayer.
func (s *Store) Pull(ctx context.Context, ref string, progress func(Progress)) (*Image, error) {
	r, err := s.parse(ref)
	if err != nil {
		return nil, err
	}
	key := r.Name()
	// Each caller's policy, before it may share another caller's flight.
	if err := s.policyFor(ctx).Check(ctx, r.Context().RegistryStr()); err != nil {
		return nil, fmt.Errorf("pull %s: %w", key, err)
	}
	if _, ok := r.(name.Digest); ok {
		s.mu.Lock()
		rec := s.lookupLocked(r)
		s.mu.Unlock()
		if rec != nil && s.hasRootFS(rec.Digest) {
			return s.cached(rec, key, progress), nil
		}
	}

	s.mu.Lock()
	f := s.flights[key]
	if f == nil {
		// The download outlives the first caller if others wait for it.
		fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		f = &flight{done: make(chan struct{}), cancel: cancel, subs: map[int]*subscriber{}}
		s.flights[key] = f
		go s.fly(fctx, f, key, r)
	}
	f.waiters++
	s.mu.Unlock()

	id := f.subscribe(progress)
	defer f.unsubscribe(id)
	select {
	case <-f.done:
	case <-ctx.Done():
		s.mu.Lock()
		if f.waiters--; f.waiters == 0 {
			f.cancel()
			if s.flights[key] == f {
				delete(s.flights, key)
			}
		}
		s.mu.Unlock()
		return nil, fmt.Errorf("pull %s: %w", key, ctx.Err())
	}
	if f.err != nil {
		return nil, f.err
	}
	img := *f.img
	img.Config = img.Config.clone()
	return &img, nil
}

// cached returns a stored image as the result of a Pull of key.
func (s *Store) cached(rec *record, key string, progress func(Progress)) *Image {
	if progress != nil {
		progress(Progress{Ref: key, Digest: rec.Digest, BytesDone: rec.Size, BytesTotal: rec.Size,
			Layer: len(rec.Layers), Layers: len(rec.Layers)})
	}
	img := s.image(rec)
	img.Ref = key
	return img
}

// flight is one pull in progress, shared by every Pull of the same ref.
type flight struct {
	done    chan struct{}
	cancel  context.CancelFunc
	waiters int // guarded by Store.mu

	img *Image // set before done is closed
	err error

	mu   sync.Mutex
	subs map[int]*subscriber
	next int
	last *Progress
}

// subscriber is one caller's progress callback; it drops updates older
// than the last one delivered and is never called after unsubscribe.
type subscriber struct {
	mu      sync.Mutex
	fn      func(Progress)
	seen    int64
	started bool
	closed  bool
}

func (sub *subscriber) send(p Progress) {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	if sub.closed || (sub.started && p.BytesDone < sub.seen) {
		return
	}
	sub.started, sub.seen = true, p.BytesDone
	sub.fn(p)
}

func (f *flight) subscribe(fn func(Progress)) int {
	if fn == nil {
		return -1
	}
	sub := &subscriber{fn: fn}
	f.mu.Lock()
	id := f.next
	f.next++
	f.subs[id] = sub
	last := f.last
	f.mu.Unlock()
	if last != nil {
		sub.send(*last)
	}
	return id
}

func (f *flight) unsubscribe(id int) {
	f.mu.Lock()
	sub := f.subs[id]
	delete(f.subs, id)
	f.mu.Unlock()
	if sub != nil {
		sub.mu.Lock()
		sub.closed = true
		sub.mu.Unlock()
	}
}

func (f *flight) emit(p Progress) {
	f.mu.Lock()
	f.last = &p
	subs := make([]*subscriber, 0, len(f.subs))
	for _, sub := range f.subs {
		subs = append(subs, sub)
	}
	f.mu.Unlock()
	for _, sub := range subs {
		sub.send(p)
	}
}

func (s *Store) fly(ctx context.Context, f *flight, key string, ref name.Reference) {
	img, err := s.pull(ctx, key, ref, f.emit)
	s.mu.Lock()
	if s.flights[key] == f {
		delete(s.flights, key)
	}
	s.mu.Unlock()
	f.img, f.err = img, err
	close(f.done)
	f.cancel()
}

func (s *Store) hasRootFS(digest string) bool {
	hex, err := digestHex(digest)
	if err != nil {
		return false
	}
	fi, err := os.Stat(s.rootfsPath(hex))
	return err == nil && fi.IsDir()
}

// pull does the work of one flight.
func (s *Store) pull(ctx context.Context, key string, ref name.Reference, emit func(Progress)) (*Image, error) {
	log := s.log.With("ref", key)
	registry := ref.Context().RegistryStr()
	fail := func(err error) (*Image, error) { return nil, fmt.Errorf("pull %s: %w", key, err) }

	s.mu.Lock()
	stored := s.images[key]
	s.mu.Unlock()
	if stored != nil && s.hasRootFS(stored.Digest) {
		var head *v1.Descriptor
		err := s.retry(ctx, registry, "check manifest", func(ctx context.Context) error {
			var err error
			head, err = s.getPuller().Head(ctx, ref)
			return err
		})
		switch {
		case err == nil && head.Digest.String() == stored.RepoDigest:
			log.Debug("stored image is up to date", "digest", stored.Digest)
			return s.cached(stored, key, emit), nil
		case errors.Is(err, ErrRegistryUnreachable):
			log.Warn("registry unreachable; using the stored image", "digest", stored.Digest, "error", err)
			return s.cached(stored, key, emit), nil
		case ctx.Err() != nil, errors.Is(err, ErrUnauthorized):
			return fail(err)
		}
		// The tag moved (or HEAD failed): fetch the manifest.
	}

	var (
		img        v1.Image
		repoDigest v1.Hash
		rawConfig  []byte
	)
	err := s.retry(ctx, registry, "fetch manifest", func(ctx context.Context) error {
		desc, err := s.getPuller().Get(ctx, ref)
		if err != nil {
			return err
		}
		repoDigest = desc.Digest
		if img, err = desc.Image(); err != nil {
			return err
		}
		rawConfig, err = img.RawConfigFile()
		return err
	})
	switch {
	case errors.Is(err, remote.ErrSchema1):
		return fail(fmt.Errorf("docker schema 1 manifests are not supported: re-push the image with a current docker, buildah or crane: %w", err))
	case err != nil && strings.Contains(err.Error(), "no child with platform"):
		return fail(fmt.Errorf("%w: the image index has no %s variant (build or push one for this platform): %w", ErrImageNotFound, s.opts.platform.String(), err))
	case err != nil:
		return fail(err)
	}
	manifest, err := img.Manifest()
	if err != nil {
		return fail(err)
	}
	imgDigest, err := img.Digest()
	if err != nil {
		return fail(err)
	}
	imgHex, err := digestHex(imgDigest.String())
	if err != nil {
		return fail(err)
	}
	cfg, err := v1.ParseConfigFile(bytes.NewReader(rawConfig))
	if err != nil {
		return fail(fmt.Errorf("image config: %w", err))
	}
	if p := s.opts.platform; cfg.OS != "" && cfg.Architecture != "" && (cfg.OS != p.OS || cfg.Architecture != p.Architecture) {
		return fail(fmt.Errorf("the image is built for %s/%s, this agent runs %s: push a %s variant (or a multi-platform index)",
			cfg.OS, cfg.Architecture, p.String(), p.String()))
	}
	layers := manifest.Layers
	diffIDs := cfg.RootFS.DiffIDs
	if len(diffIDs) != len(layers) {
		return fail(fmt.Errorf("%w: the image config lists %d layer diff IDs for %d layers", ErrInvalidLayer, len(diffIDs), len(layers)))
	}
	pins := []string{imgHex}
	rec := &record{
		Ref:        key,
		Repo:       ref.Context().Name(),
		Digest:     imgDigest.String(),
		RepoDigest: repoDigest.String(),
		Config: ImageConfig{
			Entrypoint: cfg.Config.Entrypoint,
			Cmd:        cfg.Config.Cmd,
			Env:        cfg.Config.Env,
			WorkingDir: cfg.Config.WorkingDir,
			Labels:     cfg.Config.Labels,
			User:       cfg.Config.User,
		},
		PulledAt: time.Now().UTC(),
	}
	for _, l := range layers {
		h, err := digestHex(l.Digest.String())
		if err != nil {
			return fail(fmt.Errorf("%w: layer: %w", ErrInvalidLayer, err))
		}
		if !l.MediaType.IsLayer() {
			return fail(fmt.Errorf("%w: layer %s has media type %q, not a filesystem layer (is this an OCI artifact rather than a container image?)",
				ErrInvalidLayer, l.Digest, l.MediaType))
		}
		if l.Size < 0 {
			return fail(fmt.Errorf("%w: layer %s has a negative size", ErrInvalidLayer, l.Digest))
		}
		pins = append(pins, h)
		rec.Layers = append(rec.Layers, l.Digest.String())
		rec.Size += l.Size
	}

	s.pin(pins...)
	defer func() { s.unpin(pins...) }()
	unlockRootFS, err := s.locks.lock(ctx, "rootfs/"+imgHex)
	if err != nil {
		return fail(err)
	}
	var once sync.Once
	unlock := func() { once.Do(unlockRootFS) }
	defer unlock()
	if s.hasRootFS(rec.Digest) {
		log.Debug("image already unpacked", "digest", rec.Digest)
		s.mu.Lock()
		for _, other := range s.images {
			if other.Digest == rec.Digest {
				rec.Unpacked = max(rec.Unpacked, other.Unpacked)
			}
		}
		s.mu.Unlock()
		emit(Progress{Ref: key, Digest: rec.Digest, BytesDone: rec.Size, BytesTotal: rec.Size, Layer: len(layers), Layers: len(layers)})
	} else {
		start := time.Now()
		tr := newTracker(key, layers, emit)
		unpacked, err := s.build(ctx, log, ref.Context(), layers, diffIDs, imgHex, tr)
		if errors.Is(err, ErrImageTooLarge) {
			// Nothing of it is kept: neither the partial root filesystem
			// (removed by build) nor blobs no other image uses.
			unlock()
			s.unpin(pins...)
			pins = nil
			if cerr := s.collectBlobs(rec.Layers); cerr != nil {
				log.Warn("cannot remove the blobs of a refused image", "error", cerr)
			}
			return nil, err
		}
		if err != nil {
			return fail(err)
		}
		rec.Unpacked = unpacked
		log.Info("pulled image", "digest", rec.Digest, "layers", len(layers), "bytes", rec.Size, "unpacked_bytes", unpacked,
			"downloaded", tr.downloaded(), "duration", time.Since(start).Round(time.Millisecond))
	}

	s.mu.Lock()
	if old := s.images[key]; old != nil && old.Digest != rec.Digest {
		// The tag moved: keep the old image reachable by digest (kernels
		// may still run on it) until it is removed or pruned.
		byDigest := old.Repo + "@" + old.Digest
		if _, taken := s.images[byDigest]; !taken {
			kept := *old
			kept.Ref = byDigest
			s.images[byDigest] = &kept
		}
	}
	s.images[key] = rec
	err = s.saveIndexLocked()
	s.mu.Unlock()
	if err != nil {
		return fail(err)
	}
	return s.image(rec), nil
}

// build downloads the layers (a few at a time) and unpacks them in order,
// each as soon as it is in the cache, into a staging directory renamed to
// the image's root filesystem once complete.
func (s *Store) build(ctx context.Context, log *slog.Logger, repo name.Repository, layers []v1.Descriptor, diffIDs []v1.Hash, imgHex string, tr *tracker) (int64, error) {
	stage, err := os.MkdirTemp(s.tmpDir(), "rootfs-")
	if err != nil {
		return 0, err
	}
	complete := false
	defer func() {
		if !complete {
			os.RemoveAll(stage)
		}
	}()
	if err := os.Chmod(stage, 0o755); err != nil {
		return 0, err
	}

	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	ready := make([]chan error, len(layers))
	for i := range ready {
		ready[i] = make(chan error, 1)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		sem := make(chan struct{}, s.opts.jobs)
		for i := range layers {
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				for j := i; j < len(layers); j++ {
					ready[j] <- ctx.Err()
				}
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				ready[i] <- s.fetchBlob(ctx, log, repo, i, layers[i], tr)
			}()
		}
	}()

	u, err := newUnpacker(stage, log, unpackLimits{ref: tr.ref, maxBytes: s.opts.maxBytes, maxFiles: s.opts.maxFiles})
	if err != nil {
		return 0, err
	}
	defer u.Close()
	for i, l := range layers {
		select {
		case err = <-ready[i]:
		case <-ctx.Done():
			err = ctx.Err()
		}
		if err != nil {
			return 0, err
		}
		log.Debug("unpacking layer", "layer", i+1, "layers", len(layers), "digest", l.Digest.String())
		if err := s.unpackLayer(ctx, u, l, diffIDs[i]); err != nil {
			if errors.Is(err, ErrImageTooLarge) {
				log.Warn("image too large; removing what was unpacked", "layer", i+1, "bytes", u.bytes, "files", u.files, "error", err)
				return 0, err
			}
			return 0, fmt.Errorf("layer %d of %d (%s): %w", i+1, len(layers), l.Digest, err)
		}
	}
	tr.finish()

	// Make the tree durable before it becomes visible under its final name.
	if err := syncFS(stage); err != nil {
		return 0, err
	}
	if err := os.Rename(stage, s.rootfsPath(imgHex)); err != nil {
		return 0, err
	}
	complete = true
	return u.bytes, syncDir(s.rootfsDir())
}

func syncFS(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return unix.Syncfs(int(d.Fd()))
}

// fetchBlob makes sure layer i is in the blob cache.
func (s *Store) fetchBlob(ctx context.Context, log *slog.Logger, repo name.Repository, i int, l v1.Descriptor, tr *tracker) error {
	hex := l.Digest.Hex
	unlock, err := s.locks.lock(ctx, "blob/"+hex)
	if err != nil {
		return err
	}
	defer unlock()
	if fi, err := os.Stat(s.blobPath(hex)); err == nil && fi.Size() == l.Size {
		log.Debug("layer cached", "digest", l.Digest.String())
		tr.cached(i)
		return nil
	}
	return s.retry(ctx, repo.RegistryStr(), "download layer "+l.Digest.String(), func(ctx context.Context) error {
		return s.download(ctx, repo, i, l, tr)
	})
}

// retryableError marks an error worth another attempt (a broken or
// corrupted transfer).
type retryableError struct{ error }

func (e retryableError) Unwrap() error { return e.error }

// download fetches one blob into a temporary file, checks its size and
// digest, and renames it into the cache.
func (s *Store) download(ctx context.Context, repo name.Repository, i int, l v1.Descriptor, tr *tracker) error {
	layer, err := s.getPuller().Layer(ctx, repo.Digest(l.Digest.String()))
	if err != nil {
		return err
	}
	rc, err := layer.Compressed()
	if err != nil {
		return err
	}
	defer rc.Close()
	tmp, err := os.CreateTemp(s.tmpDir(), "blob-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()

	h := sha256.New()
	cw := &countingWriter{tr: tr, layer: i}
	// One byte more than announced is enough to tell a wrong size.
	n, err := io.CopyBuffer(writerOnly{io.MultiWriter(tmp, h, cw)}, io.LimitReader(rc, l.Size+1), make([]byte, 1<<20))
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var pe *os.PathError
		if errors.As(err, &pe) && pe.Path == tmp.Name() {
			return fmt.Errorf("write %s: %w", tmp.Name(), err) // the disk, not the network
		}
		return retryableError{fmt.Errorf("read blob: %w", err)}
	}
	if n != l.Size {
		return retryableError{fmt.Errorf("blob %s: got %d bytes, the manifest says %d", l.Digest, n, l.Size)}
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != l.Digest.Hex {
		return retryableError{fmt.Errorf("blob %s: content has digest sha256:%s", l.Digest, got)}
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), s.blobPath(l.Digest.Hex))
}

type countingWriter struct {
	tr    *tracker
	layer int
	n     int64
}

func (w *countingWriter) Write(p []byte) (int, error) {
	w.n += int64(len(p))
	w.tr.set(w.layer, w.n, false)
	return len(p), nil
}

// unpackLayer decompresses a cached blob (gzip, zstd or plain tar), checks
// the uncompressed digest against the config's diff ID and applies it.
func (s *Store) unpackLayer(ctx context.Context, u *unpacker, l v1.Descriptor, diffID v1.Hash) error {
	path := s.blobPath(l.Digest.Hex)
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, 1<<20)
	magic, _ := br.Peek(4)
	var r io.Reader = br
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return fmt.Errorf("%w: gzip: %v", ErrInvalidLayer, err)
		}
		defer zr.Close()
		r = zr
	case bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(br)
		if err != nil {
			return fmt.Errorf("%w: zstd: %v", ErrInvalidLayer, err)
		}
		defer zr.Close()
		r = zr
	}
	h := sha256.New()
	tee := io.TeeReader(r, h)
	if err := u.apply(ctx, tee); err != nil {
		return err
	}
	// The tar end marker and padding count for the diff ID.
	if _, err := io.Copy(io.Discard, tee); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidLayer, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != diffID.Hex {
		// Corrupted on disk, or a broken image: fetch it again next time.
		os.Remove(path)
		return fmt.Errorf("%w: uncompressed content has digest sha256:%s, the image config says %s", ErrInvalidLayer, got, diffID)
	}
	return nil
}

// tracker sums the download progress of one pull's layers.
type tracker struct {
	mu      sync.Mutex
	ref     string
	layers  []v1.Descriptor
	done    []int64
	sum     int64
	total   int64
	fetched int64
	emitted int64
	emit    func(Progress)
}

// emitEvery throttles progress updates.
const emitEvery = 1 << 20

func newTracker(ref string, layers []v1.Descriptor, emit func(Progress)) *tracker {
	t := &tracker{ref: ref, layers: layers, done: make([]int64, len(layers)), emit: emit}
	for _, l := range layers {
		t.total += l.Size
	}
	t.emit(Progress{Ref: ref, BytesTotal: t.total, Layers: len(layers)})
	return t
}

// set records that n bytes of layer i are in (never less than before: a
// retried download counts from where the last attempt got to).
func (t *tracker) set(i int, n int64, cached bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	size := t.layers[i].Size
	n = min(n, size)
	if n <= t.done[i] {
		return
	}
	t.sum += n - t.done[i]
	if !cached {
		t.fetched += n - t.done[i]
	}
	t.done[i] = n
	if n == size || t.sum-t.emitted >= emitEvery {
		t.emitted = t.sum
		t.emit(Progress{Ref: t.ref, Digest: t.layers[i].Digest.String(), BytesDone: t.sum, BytesTotal: t.total,
			Layer: i + 1, Layers: len(t.layers)})
	}
}

func (t *tracker) cached(i int) { t.set(i, t.layers[i].Size, true) }

func (t *tracker) downloaded() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.fetched
}

// finish reports the pull complete.
func (t *tracker) finish() {
	t.mu.Lock()
	defer t.mu.Unlock()
	p := Progress{Ref: t.ref, BytesDone: t.total, BytesTotal: t.total, Layer: len(t.layers), Layers: len(t.layers)}
	if n := len(t.layers); n > 0 {
		p.Digest = t.layers[n-1].Digest.String()
	}
	t.emit(p)
}

type errKind int

const (
	kindFatal errKind = iota
	kindTransient
	kindNotFound
	kindUnauthorized
)

// classify tells what a registry error means for the caller.
func classify(err error) errKind {
	if errors.Is(err, ErrRegistryNotAllowed) {
		return kindFatal // refused by the policy at the dial: never retried
	}
	var te *transport.Error
	if errors.As(err, &te) {
		for _, d := range te.Errors {
			switch d.Code {
			case transport.ManifestUnknownErrorCode, transport.NameUnknownErrorCode, transport.BlobUnknownErrorCode:
				return kindNotFound
			case transport.UnauthorizedErrorCode, transport.DeniedErrorCode:
				return kindUnauthorized
			case transport.TooManyRequestsErrorCode:
				return kindTransient
			}
		}
		switch sc := te.StatusCode; {
		case sc == 404:
			return kindNotFound
		case sc == 401 || sc == 403:
			return kindUnauthorized
		case sc == 408 || sc == 429 || sc >= 500:
			return kindTransient
		}
		return kindFatal
	}
	var (
		re retryableError
		ue *url.Error
		oe *net.OpError
		ne net.Error
	)
	switch {
	case errors.As(err, &re), errors.As(err, &ue), errors.As(err, &oe), errors.As(err, &ne),
		errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.ECONNREFUSED),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, net.ErrClosed):
		return kindTransient
	}
	return kindFatal
}

// retry runs f up to the configured number of attempts while it fails with
// transient errors, and wraps the final error with what it means.
func (s *Store) retry(ctx context.Context, registry, what string, f func(context.Context) error) error {
	wait := s.opts.backoff
	for attempt := 1; ; attempt++ {
		err := f(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%s: %w", what, ctx.Err())
		}
		switch classify(err) {
		case kindNotFound:
			return fmt.Errorf("%w (check the repository name and tag): %s: the registry answered: %w", ErrImageNotFound, what, err)
		case kindUnauthorized:
			s.resetPuller() // read the credentials again next time
			return fmt.Errorf("%w (check the credentials for %s in the agent's docker config): %s: %w", ErrUnauthorized, registry, what, err)
		case kindFatal:
			return fmt.Errorf("%s: %w", what, err)
		}
		if attempt >= s.opts.attempts {
			return fmt.Errorf("%w: %s: %s failed %d times (check the registry address, that it is running and that this node can reach it): %w",
				ErrRegistryUnreachable, registry, what, attempt, err)
		}
		s.log.Warn("registry request failed; retrying", "registry", registry, "op", what,
			"attempt", attempt, "attempts", s.opts.attempts, "wait", wait, "error", err)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%s: %w", what, ctx.Err())
		}
		wait = min(wait*2, maxBackoff)
	}
}
