package raftlog

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

func entry(i, term uint64, size int) *raft.Log {
	data := bytes.Repeat([]byte{byte(i)}, size)
	return &raft.Log{Index: i, Term: term, Type: raft.LogCommand, Data: data,
		Extensions: []byte(fmt.Sprint("ext", i)), AppendedAt: time.Unix(1700000000, int64(i)).UTC()}
}

func open(t *testing.T, dir string, seg int64) *Store {
	t.Helper()
	s, err := Open(dir, Options{SegmentSize: seg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// check compares s with the reference store ref entry by entry.
func check(t *testing.T, s *Store, ref *raft.InmemStore) {
	t.Helper()
	f1, _ := s.FirstIndex()
	l1, _ := s.LastIndex()
	f2, _ := ref.FirstIndex()
	l2, _ := ref.LastIndex()
	// Compaction removes whole segments only: s may keep a few entries
	// before the reference's first, never fewer, and the same last.
	if l1 != l2 || (f2 != 0 && (f1 == 0 || f1 > f2)) || (f2 == 0 && f1 != 0 && l1 != 0) {
		t.Fatalf("bounds %d..%d, reference %d..%d", f1, l1, f2, l2)
	}
	for i := f2; i <= l2 && i != 0; i++ {
		var a, b raft.Log
		if err := s.GetLog(i, &a); err != nil {
			t.Fatalf("GetLog(%d): %v", i, err)
		}
		if err := ref.GetLog(i, &b); err != nil {
			t.Fatal(err)
		}
		if a.Index != b.Index || a.Term != b.Term || a.Type != b.Type || !bytes.Equal(a.Data, b.Data) ||
			!bytes.Equal(a.Extensions, b.Extensions) || !a.AppendedAt.Equal(b.AppendedAt) {
			t.Fatalf("entry %d = %+v, want %+v", i, a, b)
		}
	}
	var l raft.Log
	if err := s.GetLog(l1+1, &l); !errors.Is(err, raft.ErrLogNotFound) {
		t.Fatalf("GetLog past the end: %v", err)
	}
}

// TestAgainstInmem runs random appends, compactions, conflicting-suffix
// truncations, full resets and reopenings against raft's in-memory store.
func TestAgainstInmem(t *testing.T) {
	for seed := uint64(1); seed <= 20; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 7))
			dir := t.TempDir()
			s, err := Open(dir, Options{SegmentSize: 4096, NoSync: true})
			if err != nil {
				t.Fatal(err)
			}
			defer func() { s.Close() }()
			ref := raft.NewInmemStore()
			term := uint64(1)
			for step := 0; step < 300; step++ {
				first, _ := ref.FirstIndex()
				last, _ := ref.LastIndex()
				switch op := rng.IntN(20); {
				case op < 12: // append a batch
					start := last + 1
					if last == 0 {
						start = first + 1 + uint64(rng.IntN(50)) // an empty log starts anywhere
						if first == 0 {
							start = uint64(1 + rng.IntN(50))
						}
					}
					var batch []*raft.Log
					for i := 0; i < 1+rng.IntN(8); i++ {
						batch = append(batch, entry(start+uint64(i), term, rng.IntN(1500)))
					}
					if err := s.StoreLogs(batch); err != nil {
						t.Fatal(err)
					}
					if err := ref.StoreLogs(batch); err != nil {
						t.Fatal(err)
					}
				case op < 15 && last > first: // compact a prefix
					max := first + uint64(rng.IntN(int(last-first)))
					if err := s.DeleteRange(first, max); err != nil {
						t.Fatal(err)
					}
					// The reference drops what s dropped (whole segments).
					sf, _ := s.FirstIndex()
					if sf > first {
						_ = ref.DeleteRange(first, sf-1)
					}
				case op < 18 && last > first: // a new leader's conflict
					min := first + 1 + uint64(rng.IntN(int(last-first)))
					if err := s.DeleteRange(min, last); err != nil {
						t.Fatal(err)
					}
					_ = ref.DeleteRange(min, last)
					term++
				case op == 18 && last != 0: // snapshot restore: all gone
					if err := s.DeleteRange(first, last); err != nil {
						t.Fatal(err)
					}
					_ = ref.DeleteRange(first, last)
				default: // restart
					if err := s.Close(); err != nil {
						t.Fatal(err)
					}
					if s, err = Open(dir, Options{SegmentSize: 4096, NoSync: true}); err != nil {
						t.Fatal(err)
					}
					if r := s.Repaired(); len(r) > 0 {
						t.Fatalf("a clean reopen repaired %v", r)
					}
				}
				// The reference's bounds after a full delete read 0.
				if f, _ := ref.FirstIndex(); f == 0 {
					if l, _ := ref.LastIndex(); l != 0 {
						t.Fatal("reference inconsistent")
					}
				}
				check(t, s, ref)
			}
		})
	}
}

func TestRefusesGapsAndOverlaps(t *testing.T) {
	s := open(t, t.TempDir(), 0)
	if err := s.StoreLogs([]*raft.Log{entry(5, 1, 10), entry(6, 1, 10)}); err != nil {
		t.Fatal(err)
	}
	for _, batch := range [][]*raft.Log{{entry(8, 1, 1)}, {entry(6, 1, 1)}, {entry(7, 1, 1), entry(9, 1, 1)}} {
		if err := s.StoreLogs(batch); err == nil {
			t.Errorf("StoreLogs(%d..) after 5..6 succeeded", batch[0].Index)
		}
	}
	if l, _ := s.LastIndex(); l != 6 {
		t.Fatalf("last = %d after refused appends", l)
	}
	if err := s.DeleteRange(6, 6); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteRange(5, 5); err != nil { // now all of it
		t.Fatal(err)
	}
	if f, _ := s.FirstIndex(); f != 0 {
		t.Fatalf("first = %d after deleting everything", f)
	}
	if err := s.StoreLog(entry(100, 2, 5)); err != nil {
		t.Fatalf("an empty log must take any index: %v", err)
	}
}

// TestTornTail cuts the newest segment at every byte of its last record:
// the store opens with the records before it, and appends go on.
func TestTornTail(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i := uint64(1); i <= 3; i++ {
		if err := s.StoreLog(entry(i, 1, 100)); err != nil {
			t.Fatal(err)
		}
	}
	seg := s.segs[0]
	full, cut := seg.end, seg.offs[2]
	s.Close()
	path := filepath.Join(dir, segName(1))
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for n := cut + 1; n < full; n += 17 {
		if err := os.WriteFile(path, orig[:n], 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := Open(dir, Options{})
		if err != nil {
			t.Fatalf("cut at %d: %v", n, err)
		}
		if l, _ := s.LastIndex(); l != 2 {
			t.Fatalf("cut at %d: last = %d, want 2", n, l)
		}
		if len(s.Repaired()) != 1 {
			t.Fatalf("cut at %d: repairs %v", n, s.Repaired())
		}
		if err := s.StoreLog(entry(3, 2, 50)); err != nil {
			t.Fatal(err)
		}
		var l raft.Log
		if err := s.GetLog(3, &l); err != nil || l.Term != 2 {
			t.Fatalf("entry 3 after repair: %+v %v", l, err)
		}
		s.Close()
	}
	// A flipped byte in a record is a checksum error: cut off when it is
	// the newest segment's tail...
	bad := append([]byte(nil), orig...)
	bad[cut+recHeader+20] ^= 0xff
	if err := os.WriteFile(path, bad, 0o600); err != nil {
		t.Fatal(err)
	}
	s, err = Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if l, _ := s.LastIndex(); l != 2 {
		t.Fatalf("last = %d after a damaged tail", l)
	}
	s.Close()
}

// TestDamageBeforeTheTail refuses to open a log whose older segment is
// damaged: acknowledged entries would be lost.
func TestDamageBeforeTheTail(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{SegmentSize: 512})
	if err != nil {
		t.Fatal(err)
	}
	for i := uint64(1); i <= 10; i++ {
		if err := s.StoreLog(entry(i, 1, 200)); err != nil {
			t.Fatal(err)
		}
	}
	if len(s.segs) < 3 {
		t.Fatalf("%d segments, want several", len(s.segs))
	}
	older := s.segs[0].path
	s.Close()
	b, _ := os.ReadFile(older)
	b[len(b)-5] ^= 0xff
	if err := os.WriteFile(older, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir, Options{SegmentSize: 512}); err == nil || !strings.Contains(err.Error(), "checksum") {
		t.Fatalf("Open = %v, want a checksum error", err)
	}
}

// TestCompactionFreesDisk: a compacted log gives its segments back.
func TestCompactionFreesDisk(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, 64<<10)
	for i := uint64(1); i <= 2000; i++ {
		if err := s.StoreLog(entry(i, 1, 1000)); err != nil {
			t.Fatal(err)
		}
	}
	before := dirSize(t, dir)
	if err := s.DeleteRange(1, 1900); err != nil {
		t.Fatal(err)
	}
	after := dirSize(t, dir)
	if after > before/5 {
		t.Fatalf("log kept %d of %d bytes after compacting 1900 of 2000 entries", after, before)
	}
	first, _ := s.FirstIndex()
	if first > 1901 || first < 1800 {
		t.Fatalf("first = %d after compacting to 1900 (segments of ~64 entries)", first)
	}
}

func dirSize(t *testing.T, dir string) int64 {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		n += fi.Size()
	}
	return n
}

func TestStable(t *testing.T) {
	path := filepath.Join(t.TempDir(), "stable.json")
	s, err := OpenStable(path, false)
	if err != nil {
		t.Fatal(err)
	}
	if v, err := s.GetUint64([]byte("CurrentTerm")); err != nil || v != 0 {
		t.Fatalf("unset uint64 = %d, %v", v, err)
	}
	if _, err := s.Get([]byte("LastVoteCand")); err == nil || err.Error() != "not found" {
		t.Fatalf("unset key: %v, want raft's \"not found\"", err)
	}
	if err := s.SetUint64([]byte("CurrentTerm"), 7); err != nil {
		t.Fatal(err)
	}
	if err := s.Set([]byte("LastVoteCand"), []byte("server-1")); err != nil {
		t.Fatal(err)
	}
	s, err = OpenStable(path, false)
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := s.GetUint64([]byte("CurrentTerm")); v != 7 {
		t.Fatalf("term after reopen = %d", v)
	}
	if v, _ := s.Get([]byte("LastVoteCand")); string(v) != "server-1" {
		t.Fatalf("vote after reopen = %q", v)
	}
}

func BenchmarkStoreLogs(b *testing.B) {
	s, err := Open(b.TempDir(), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	i := uint64(1)
	for b.Loop() {
		if err := s.StoreLogs([]*raft.Log{entry(i, 1, 2000), entry(i+1, 1, 2000)}); err != nil {
			b.Fatal(err)
		}
		i += 2
	}
}
