package server

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
)

// TestRaftDBMigration: a raft.db of an older server is moved into the
// segment log and stable file, entries and term and vote intact, once.
func TestRaftDBMigration(t *testing.T) {
	dir := t.TempDir()
	old, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(dir, legacyRaftDB)})
	if err != nil {
		t.Fatal(err)
	}
	for i := uint64(40); i <= 90; i++ {
		if err := old.StoreLog(&raft.Log{Index: i, Term: 3, Type: raft.LogCommand, Data: []byte{byte(i), 1, 2}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := old.SetUint64([]byte("CurrentTerm"), 3); err != nil {
		t.Fatal(err)
	}
	if err := old.Set([]byte("LastVoteCand"), []byte("srv-a")); err != nil {
		t.Fatal(err)
	}
	old.Close()
	if !hasRaftState(dir) {
		t.Fatal("a raft.db is raft state")
	}
	for round := 0; round < 2; round++ { // the second open finds it moved
		logs, stable, err := openRaftStores(dir, t.Logf)
		if err != nil {
			t.Fatal(err)
		}
		first, _ := logs.FirstIndex()
		last, _ := logs.LastIndex()
		if first != 40 || last != 90 {
			t.Fatalf("round %d: log %d..%d, want 40..90", round, first, last)
		}
		var l raft.Log
		if err := logs.GetLog(77, &l); err != nil || l.Term != 3 || l.Data[0] != 77 {
			t.Fatalf("entry 77 = %+v, %v", l, err)
		}
		if term, _ := stable.GetUint64([]byte("CurrentTerm")); term != 3 {
			t.Fatalf("term = %d", term)
		}
		if v, _ := stable.Get([]byte("LastVoteCand")); string(v) != "srv-a" {
			t.Fatalf("vote = %q", v)
		}
		logs.Close()
		if _, err := os.Stat(filepath.Join(dir, legacyRaftDB)); !os.IsNotExist(err) {
			t.Fatalf("raft.db still in place: %v", err)
		}
		if _, err := os.Stat(filepath.Join(dir, legacyRaftDB+".migrated")); err != nil {
			t.Fatal(err)
		}
	}
	if !hasRaftState(dir) {
		t.Fatal("a migrated dir is raft state")
	}
}
