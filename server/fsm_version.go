package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"sort"
	"strings"

	"github.com/corral-dev/corral/server/state"
	"github.com/corral-dev/corral/structs"
)

// ErrUnknownEntry is what Apply returns for a raft entry of a type this
// server does not know and that is not flagged ignorable: a newer server
// wrote it, and this one must be upgraded before it can follow the log.
var ErrUnknownEntry = errors.New("unknown raft entry type")

// entryType splits an entry's type byte into its type and whether an
// older server may skip it.
func entryType(b byte) (structs.MessageType, bool) {
	t := structs.MessageType(b)
	return t &^ structs.IgnoreUnknownTypeFlag, t&structs.IgnoreUnknownTypeFlag != 0
}

// unknownEntry handles an entry of a type this server does not know: an
// ignorable one is skipped with a warning; any other is an error logged
// loudly (the state no longer matches the leader's), never a panic.
func (f *fsm) unknownEntry(t structs.MessageType, ignorable bool, index uint64) any {
	if ignorable {
		f.logger.Warn("skipping raft entry of unknown type flagged ignorable (written by a newer server)", "type", int(t), "index", index)
		return nil
	}
	err := fmt.Errorf("%w %d at index %d: a newer server wrote it; upgrade this server (docs/upgrades.md)", ErrUnknownEntry, t, index)
	f.logger.Error("cannot apply raft entry: this server is older than the one that wrote it", "type", int(t), "index", index, "error", err)
	return err
}

// decodeDump reads a snapshot. Fields of rows that this server does not
// know are dropped (JSON decoding ignores them) and missing ones take
// their zero value; tables it does not know are dropped with a warning
// naming them, as a newer server's snapshot may hold some.
func (f *fsm) decodeDump(r io.Reader) (*state.Dump, error) {
	var raw map[string]json.RawMessage
	if err := json.NewDecoder(r).Decode(&raw); err != nil {
		return nil, fmt.Errorf("decode snapshot: %w", err)
	}
	d := new(state.Dump)
	v := reflect.ValueOf(d).Elem()
	for i := 0; i < v.NumField(); i++ {
		name, _, _ := strings.Cut(v.Type().Field(i).Tag.Get("json"), ",")
		msg, ok := raw[name]
		if !ok {
			continue
		}
		delete(raw, name)
		if err := json.Unmarshal(msg, v.Field(i).Addr().Interface()); err != nil {
			return nil, fmt.Errorf("decode snapshot table %s: %w", name, err)
		}
	}
	if len(raw) > 0 {
		unknown := make([]string, 0, len(raw))
		for k := range raw {
			unknown = append(unknown, k)
		}
		sort.Strings(unknown)
		f.logger.Warn("snapshot holds tables this server does not know (written by a newer server); dropping them", "tables", unknown)
	}
	return d, nil
}
