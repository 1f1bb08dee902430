package server

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"

	"github.com/corral-dev/corral/server/raftlog"
)

// The raft stores in DATA/raft: the log's segments in log/, the term and
// vote in stable.json (package raftlog). Servers before them kept both in
// raft.db (raft-boltdb), which openRaftStores moves over once.
const (
	raftLogDir     = "log"
	raftStableFile = "stable.json"
	legacyRaftDB   = "raft.db"
)

// raft's stable store keys (raft.go): all it keeps there.
var raftStableKeys = []string{"CurrentTerm", "LastVoteTerm", "LastVoteCand"}

// hasRaftState says whether dir (DATA/raft) holds a raft log, of either
// format.
func hasRaftState(dir string) bool {
	for _, p := range []string{filepath.Join(dir, raftStableFile), filepath.Join(dir, legacyRaftDB)} {
		if _, err := os.Stat(p); err == nil {
			return true
		}
	}
	return false
}

// openRaftStores opens the log and stable stores in dir, first moving a
// raft.db of an older server into them: the entries and the keys are
// copied into a directory aside, which is renamed into place once
// complete, then raft.db is renamed raft.db.migrated (a crash in between
// redoes or finishes the move at the next start).
func openRaftStores(dir string, logf func(msg string, args ...any)) (*raftlog.Store, *raftlog.Stable, error) {
	legacy := filepath.Join(dir, legacyRaftDB)
	logDir := filepath.Join(dir, raftLogDir)
	_, lerr := os.Stat(legacy)
	_, nerr := os.Stat(filepath.Join(dir, raftStableFile))
	if lerr == nil && errors.Is(nerr, fs.ErrNotExist) {
		n, err := migrateBolt(dir, legacy)
		if err != nil {
			return nil, nil, fmt.Errorf("moving %s to the segment log: %w", legacy, err)
		}
		logf("moved the raft log from raft.db to segment files", "entries", n)
	}
	if lerr == nil {
		if err := os.Rename(legacy, legacy+".migrated"); err != nil {
			return nil, nil, err
		}
	}
	logs, err := raftlog.Open(logDir, raftlog.Options{})
	if err != nil {
		return nil, nil, err
	}
	for _, r := range logs.Repaired() {
		logf("raft log: cut off an unacknowledged torn write", "repair", r)
	}
	stable, err := raftlog.OpenStable(filepath.Join(dir, raftStableFile), false)
	if err != nil {
		logs.Close()
		return nil, nil, err
	}
	return logs, stable, nil
}

// migrateBolt copies raft.db's log and keys into DATA/raft/log and
// stable.json, and returns how many entries it copied. stable.json is
// written last: its presence says the move is complete.
func migrateBolt(dir, legacy string) (int, error) {
	old, err := raftboltdb.New(raftboltdb.Options{Path: legacy})
	if err != nil {
		return 0, err
	}
	defer old.Close()
	tmp := filepath.Join(dir, raftLogDir+".migrating")
	if err := os.RemoveAll(tmp); err != nil {
		return 0, err
	}
	logs, err := raftlog.Open(tmp, raftlog.Options{})
	if err != nil {
		return 0, err
	}
	first, err := old.FirstIndex()
	if err != nil {
		logs.Close()
		return 0, err
	}
	last, err := old.LastIndex()
	if err != nil {
		logs.Close()
		return 0, err
	}
	n := 0
	for i := first; i <= last && i != 0; i++ {
		var l raft.Log
		if err := old.GetLog(i, &l); err != nil {
			logs.Close()
			return 0, fmt.Errorf("entry %d: %w", i, err)
		}
		if err := logs.StoreLog(&l); err != nil {
			logs.Close()
			return 0, err
		}
		n++
	}
	if err := logs.Close(); err != nil {
		return 0, err
	}
	logDir := filepath.Join(dir, raftLogDir)
	if err := os.RemoveAll(logDir); err != nil {
		return 0, err
	}
	if err := os.Rename(tmp, logDir); err != nil {
		return 0, err
	}
	stable, err := raftlog.OpenStable(filepath.Join(dir, raftStableFile+".migrating"), false)
	if err != nil {
		return 0, err
	}
	for _, k := range raftStableKeys {
		v, err := old.Get([]byte(k))
		if err != nil {
			continue // never set
		}
		if err := stable.Set([]byte(k), v); err != nil {
			return 0, err
		}
	}
	if err := os.Rename(filepath.Join(dir, raftStableFile+".migrating"), filepath.Join(dir, raftStableFile)); err != nil {
		return 0, err
	}
	return n, nil
}
