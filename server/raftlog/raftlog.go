// Package raftlog is the servers' raft log store: append-only segment
// files read with pread, so that the log costs no resident memory beyond
// an index of offsets, and a log compacted after a snapshot gives its disk
// space back by deleting whole segments. It replaces raft-boltdb, whose
// mmapped B+tree kept every page it ever touched resident (a 5,000-session
// soak grew the server's RSS by a third with nothing in the state) and
// never shrank.
//
// Layout: DIR/NNNNNNNNNNNNNNNNNNNN.seg, named by the index of the segment's
// first entry. A segment is a header (magic, first index) followed by
// records: a 4-byte length, a 4-byte CRC-32C of the payload, and the
// payload (index, term, type, append time, data, extensions). A batch is
// written with one write and one fdatasync; a torn tail (a crash in the
// middle of a write) is cut off when the store is opened. The store is
// monotonic (raft.MonotonicLogStore): indices are contiguous.
//
// The stable store (current term, vote) is a small file replaced
// atomically (stable.go).
package raftlog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

const (
	segSuffix = ".seg"
	// magic starts every segment (format version 1).
	magic      = "CRLLOG01"
	headerSize = len(magic) + 8
	recHeader  = 8 // length + CRC
	// maxRecord bounds one entry; anything larger in a file is damage.
	maxRecord = 256 << 20
	// DefaultSegmentSize is when a segment is closed and a new one begun.
	DefaultSegmentSize = 16 << 20
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// Options tune a Store.
type Options struct {
	// SegmentSize is the size past which a new segment is begun
	// (DefaultSegmentSize when 0).
	SegmentSize int64
	// NoSync skips fsync (tests only).
	NoSync bool
}

// segment is one file: the entries first..first+len(offs)-1, entry i at
// offs[i-first]; end is where the next record goes.
type segment struct {
	first uint64
	path  string
	f     *os.File
	offs  []int64
	end   int64
}

func (s *segment) last() uint64 { return s.first + uint64(len(s.offs)) - 1 }

// Store is a raft.LogStore over segment files. It is safe for concurrent
// use.
type Store struct {
	dir  string
	opts Options

	mu   sync.RWMutex
	segs []*segment // oldest first; the last one takes appends
	// truncated records, per segment path, the repairs Open made.
	repaired []string
}

var (
	_ raft.LogStore          = (*Store)(nil)
	_ raft.MonotonicLogStore = (*Store)(nil)
)

// Open opens (creating it if needed) the log in dir, checking every
// record. A torn record at the end of the newest segment (a write a crash
// interrupted, never acknowledged) is cut off; damage anywhere else is an
// error, since acknowledged entries would be lost.
func Open(dir string, opts Options) (*Store, error) {
	if opts.SegmentSize <= 0 {
		opts.SegmentSize = DefaultSegmentSize
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	s := &Store{dir: dir, opts: opts}
	names, err := segmentNames(dir)
	if err != nil {
		return nil, err
	}
	for i, name := range names {
		seg, err := s.openSegment(filepath.Join(dir, name), i == len(names)-1)
		if err != nil {
			s.Close()
			return nil, err
		}
		if n := len(s.segs); n > 0 && len(s.segs[n-1].offs) > 0 && seg.first != s.segs[n-1].last()+1 {
			// Segments past a gap are left from a suffix truncation
			// a crash interrupted (the later ones are removed first,
			// so this happens only if the removal was not durable):
			// they were being deleted.
			_ = seg.f.Close()
			if err := s.dropFrom(names[i:]); err != nil {
				s.Close()
				return nil, err
			}
			break
		}
		s.segs = append(s.segs, seg)
	}
	// An empty segment in front of others cannot be: drop empty ones that
	// are not the newest.
	for len(s.segs) > 1 && len(s.segs[0].offs) == 0 {
		_ = s.segs[0].f.Close()
		if err := os.Remove(s.segs[0].path); err != nil {
			s.Close()
			return nil, err
		}
		s.segs = s.segs[1:]
	}
	return s, nil
}

// Repaired lists what Open cut off (torn tails), for the server's log.
func (s *Store) Repaired() []string { return slices.Clone(s.repaired) }

func segmentNames(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range ents {
		if n := e.Name(); strings.HasSuffix(n, segSuffix) && !e.IsDir() {
			names = append(names, n)
		}
	}
	slices.Sort(names) // zero-padded: name order is index order
	return names, nil
}

func segName(first uint64) string { return fmt.Sprintf("%020d%s", first, segSuffix) }

// dropFrom removes the given segment files, newest first.
func (s *Store) dropFrom(names []string) error {
	for i := len(names) - 1; i >= 0; i-- {
		if err := os.Remove(filepath.Join(s.dir, names[i])); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return s.syncDir()
}

// openSegment reads a segment's records; tail says it is the newest,
// whose torn end may be cut off.
func (s *Store) openSegment(path string, tail bool) (*segment, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	seg := &segment{path: path, f: f}
	fail := func(format string, a ...any) (*segment, error) {
		f.Close()
		return nil, fmt.Errorf("raft log segment %s: "+format, append([]any{path}, a...)...)
	}
	st, err := f.Stat()
	if err != nil {
		return fail("%v", err)
	}
	size := st.Size()
	hdr := make([]byte, headerSize)
	if _, err := f.ReadAt(hdr, 0); err != nil || string(hdr[:len(magic)]) != magic {
		if tail && size < int64(headerSize) {
			// Created but its header never made it: nothing was
			// acknowledged in it.
			f.Close()
			if err := os.Remove(path); err != nil {
				return nil, err
			}
			s.repaired = append(s.repaired, path+": removed a segment without a complete header")
			first, perr := strconv.ParseUint(strings.TrimSuffix(filepath.Base(path), segSuffix), 10, 64)
			if perr != nil {
				return nil, fmt.Errorf("raft log segment %s: bad name", path)
			}
			return s.createSegment(first)
		}
		return fail("bad header (not a corral raft log segment, or damaged)")
	}
	seg.first = binary.BigEndian.Uint64(hdr[len(magic):])
	off := int64(headerSize)
	buf := make([]byte, 0, 64<<10)
	rh := make([]byte, recHeader)
	for off < size {
		bad := ""
		if size-off < recHeader {
			bad = "short record header"
		} else if _, err := f.ReadAt(rh, off); err != nil {
			return fail("reading at %d: %v", off, err)
		} else if n := binary.BigEndian.Uint32(rh[:4]); n > maxRecord || int64(n) > size-off-recHeader {
			bad = fmt.Sprintf("record of %d bytes past the end", n)
		} else {
			buf = slices.Grow(buf[:0], int(n))[:n]
			if _, err := f.ReadAt(buf, off+recHeader); err != nil {
				return fail("reading at %d: %v", off, err)
			}
			if crc32.Checksum(buf, crcTable) != binary.BigEndian.Uint32(rh[4:]) {
				bad = "checksum mismatch"
			} else if idx := binary.BigEndian.Uint64(buf); idx != seg.first+uint64(len(seg.offs)) {
				bad = fmt.Sprintf("entry %d where %d belongs", idx, seg.first+uint64(len(seg.offs)))
			} else {
				seg.offs = append(seg.offs, off)
				off += recHeader + int64(n)
				continue
			}
		}
		if !tail {
			return fail("%s at offset %d", bad, off)
		}
		// The torn end of the newest segment: never acknowledged.
		if err := f.Truncate(off); err != nil {
			return fail("cutting off a torn record: %v", err)
		}
		if err := s.sync(f); err != nil {
			return fail("%v", err)
		}
		s.repaired = append(s.repaired, fmt.Sprintf("%s: cut off %d bytes at offset %d (%s)", path, size-off, off, bad))
		size = off
	}
	seg.end = off
	return seg, nil
}

func (s *Store) sync(f *os.File) error {
	if s.opts.NoSync {
		return nil
	}
	return f.Sync()
}

func (s *Store) syncDir() error {
	if s.opts.NoSync {
		return nil
	}
	d, err := os.Open(s.dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// createSegment makes a new, empty segment whose first entry is first.
func (s *Store) createSegment(first uint64) (*segment, error) {
	path := filepath.Join(s.dir, segName(first))
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	hdr := make([]byte, headerSize)
	copy(hdr, magic)
	binary.BigEndian.PutUint64(hdr[len(magic):], first)
	if _, err := f.WriteAt(hdr, 0); err != nil {
		f.Close()
		return nil, err
	}
	if err := s.sync(f); err != nil {
		f.Close()
		return nil, err
	}
	if err := s.syncDir(); err != nil {
		f.Close()
		return nil, err
	}
	return &segment{first: first, path: path, f: f, end: int64(headerSize)}, nil
}

// Close closes the segment files.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var err error
	for _, seg := range s.segs {
		err = errors.Join(err, seg.f.Close())
	}
	s.segs = nil
	return err
}

// IsMonotonic tells raft that indices are contiguous: after a snapshot
// restore it deletes the whole log instead of leaving a gap.
func (s *Store) IsMonotonic() bool { return true }

// bounds returns the first and last index, 0, 0 when empty.
func (s *Store) bounds() (first, last uint64) {
	for _, seg := range s.segs {
		if len(seg.offs) > 0 {
			first = seg.first
			break
		}
	}
	if first == 0 {
		return 0, 0
	}
	return first, s.segs[len(s.segs)-1].last()
}

// FirstIndex returns the first index in the log, 0 when empty.
func (s *Store) FirstIndex() (uint64, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	first, _ := s.bounds()
	return first, nil
}

// LastIndex returns the last index in the log, 0 when empty.
func (s *Store) LastIndex() (uint64, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	_, last := s.bounds()
	return last, nil
}

// GetLog reads entry index into log, or returns raft.ErrLogNotFound.
func (s *Store) GetLog(index uint64, log *raft.Log) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	first, last := s.bounds()
	if index < first || index > last || first == 0 {
		return raft.ErrLogNotFound
	}
	i, _ := slices.BinarySearchFunc(s.segs, index, func(seg *segment, idx uint64) int {
		switch {
		case len(seg.offs) == 0 || seg.last() < idx:
			return -1
		case seg.first > idx:
			return 1
		}
		return 0
	})
	if i >= len(s.segs) {
		return raft.ErrLogNotFound
	}
	seg := s.segs[i]
	off := seg.offs[index-seg.first]
	end := seg.end
	if j := index - seg.first + 1; j < uint64(len(seg.offs)) {
		end = seg.offs[j]
	}
	buf := make([]byte, end-off)
	if _, err := seg.f.ReadAt(buf, off); err != nil {
		return fmt.Errorf("raft log: reading entry %d: %w", index, err)
	}
	n := binary.BigEndian.Uint32(buf[:4])
	payload := buf[recHeader:]
	if int(n) != len(payload) || crc32.Checksum(payload, crcTable) != binary.BigEndian.Uint32(buf[4:8]) {
		return fmt.Errorf("raft log: entry %d in %s is damaged", index, seg.path)
	}
	return decode(payload, log)
}

// StoreLog appends one entry.
func (s *Store) StoreLog(log *raft.Log) error { return s.StoreLogs([]*raft.Log{log}) }

// StoreLogs appends entries, which must follow the last one (or start
// anywhere when the log is empty), with one write and one fdatasync per
// segment touched.
func (s *Store) StoreLogs(logs []*raft.Log) error {
	if len(logs) == 0 {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	_, last := s.bounds()
	next := logs[0].Index
	if last != 0 && next != last+1 {
		return fmt.Errorf("raft log: entry %d does not follow the last entry %d", next, last)
	}
	for i, l := range logs {
		if l.Index != next+uint64(i) {
			return fmt.Errorf("raft log: entries not contiguous (%d after %d)", l.Index, next+uint64(i)-1)
		}
	}
	if last == 0 {
		// Empty: begin at the first entry given.
		for _, seg := range s.segs {
			_ = seg.f.Close()
			_ = os.Remove(seg.path)
		}
		s.segs = nil
	}
	var buf []byte
	for len(logs) > 0 {
		seg, err := s.activeSegment(logs[0].Index)
		if err != nil {
			return err
		}
		buf = buf[:0]
		var offs []int64
		n := 0
		for ; n < len(logs); n++ {
			if n > 0 && seg.end+int64(len(buf)) >= s.opts.SegmentSize {
				break // the rest goes to a new segment
			}
			offs = append(offs, seg.end+int64(len(buf)))
			buf = appendRecord(buf, logs[n])
		}
		if _, err := seg.f.WriteAt(buf, seg.end); err != nil {
			// Cut off whatever part was written: it was never acknowledged.
			_ = seg.f.Truncate(seg.end)
			return fmt.Errorf("raft log: writing: %w", err)
		}
		if err := s.datasync(seg.f); err != nil {
			_ = seg.f.Truncate(seg.end)
			return fmt.Errorf("raft log: syncing: %w", err)
		}
		seg.offs = append(seg.offs, offs...)
		seg.end += int64(len(buf))
		logs = logs[n:]
	}
	return nil
}

// activeSegment returns the segment the entry index is appended to,
// beginning a new one when there is none or the newest is full.
func (s *Store) activeSegment(index uint64) (*segment, error) {
	if n := len(s.segs); n > 0 {
		seg := s.segs[n-1]
		if len(seg.offs) == 0 && seg.first != index {
			// An empty segment named for another index: replace it.
			_ = seg.f.Close()
			if err := os.Remove(seg.path); err != nil {
				return nil, err
			}
			s.segs = s.segs[:n-1]
		} else if seg.end < s.opts.SegmentSize || len(seg.offs) == 0 {
			return seg, nil
		}
	}
	seg, err := s.createSegment(index)
	if err != nil {
		return nil, fmt.Errorf("raft log: new segment: %w", err)
	}
	s.segs = append(s.segs, seg)
	return seg, nil
}

func (s *Store) datasync(f *os.File) error {
	if s.opts.NoSync {
		return nil
	}
	return fdatasync(f)
}

// DeleteRange deletes the entries min..max (inclusive): a prefix (log
// compaction after a snapshot: whole segments are removed, so a few
// entries before max may stay until their segment is wholly below it), a
// suffix (entries that conflict with a new leader's), or all of them.
func (s *Store) DeleteRange(min, max uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	first, last := s.bounds()
	if first == 0 || max < first || min > last || min > max {
		return nil
	}
	switch {
	case min <= first && max >= last:
		for i := len(s.segs) - 1; i >= 0; i-- {
			_ = s.segs[i].f.Close()
			if err := os.Remove(s.segs[i].path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				s.segs = s.segs[:i+1]
				return fmt.Errorf("raft log: %w", err)
			}
		}
		s.segs = nil
		return s.syncDir()
	case min <= first:
		// A prefix: the segments wholly at or below max, oldest first
		// (a crash in between leaves a shorter, still contiguous log).
		for len(s.segs) > 1 && s.segs[0].last() <= max {
			_ = s.segs[0].f.Close()
			if err := os.Remove(s.segs[0].path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("raft log: %w", err)
			}
			s.segs = s.segs[1:]
		}
		return s.syncDir()
	case max >= last:
		// A suffix: remove the newer segments (newest first), then cut
		// the one that holds min.
		for len(s.segs) > 0 && s.segs[len(s.segs)-1].first >= min {
			seg := s.segs[len(s.segs)-1]
			_ = seg.f.Close()
			if err := os.Remove(seg.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("raft log: %w", err)
			}
			s.segs = s.segs[:len(s.segs)-1]
		}
		if err := s.syncDir(); err != nil {
			return err
		}
		if len(s.segs) == 0 {
			return nil
		}
		seg := s.segs[len(s.segs)-1]
		keep := min - seg.first
		if keep >= uint64(len(seg.offs)) {
			return nil
		}
		end := seg.offs[keep]
		if err := seg.f.Truncate(end); err != nil {
			return fmt.Errorf("raft log: truncating: %w", err)
		}
		if err := s.sync(seg.f); err != nil {
			return fmt.Errorf("raft log: %w", err)
		}
		seg.offs = seg.offs[:keep]
		seg.end = end
		return nil
	}
	return fmt.Errorf("raft log: cannot delete entries %d..%d from the middle of %d..%d", min, max, first, last)
}

// appendRecord appends l's record (header and payload) to buf.
func appendRecord(buf []byte, l *raft.Log) []byte {
	start := len(buf)
	buf = append(buf, make([]byte, recHeader)...)
	buf = binary.BigEndian.AppendUint64(buf, l.Index)
	buf = binary.BigEndian.AppendUint64(buf, l.Term)
	buf = append(buf, byte(l.Type))
	var at int64
	if !l.AppendedAt.IsZero() {
		at = l.AppendedAt.UnixNano()
	}
	buf = binary.BigEndian.AppendUint64(buf, uint64(at))
	buf = binary.BigEndian.AppendUint32(buf, uint32(len(l.Data)))
	buf = append(buf, l.Data...)
	buf = binary.BigEndian.AppendUint32(buf, uint32(len(l.Extensions)))
	buf = append(buf, l.Extensions...)
	payload := buf[start+recHeader:]
	binary.BigEndian.PutUint32(buf[start:], uint32(len(payload)))
	binary.BigEndian.PutUint32(buf[start+4:], crc32.Checksum(payload, crcTable))
	return buf
}

var errShort = errors.New("raft log: short entry")

// decode reads a record's payload into l (copying nothing: payload is
// the caller's own buffer).
func decode(p []byte, l *raft.Log) error {
	if len(p) < 8+8+1+8+4 {
		return errShort
	}
	l.Index = binary.BigEndian.Uint64(p)
	l.Term = binary.BigEndian.Uint64(p[8:])
	l.Type = raft.LogType(p[16])
	at := int64(binary.BigEndian.Uint64(p[17:]))
	l.AppendedAt = time.Time{}
	if at != 0 {
		l.AppendedAt = time.Unix(0, at)
	}
	p = p[25:]
	n := binary.BigEndian.Uint32(p)
	p = p[4:]
	if uint32(len(p)) < n+4 {
		return errShort
	}
	l.Data = nil
	if n > 0 {
		l.Data = p[:n:n]
	}
	p = p[n:]
	m := binary.BigEndian.Uint32(p)
	p = p[4:]
	if uint32(len(p)) != m {
		return errShort
	}
	l.Extensions = nil
	if m > 0 {
		l.Extensions = p[:m:m]
	}
	return nil
}
