package state

import (
	"errors"
	"fmt"
	"slices"

	"github.com/hashicorp/go-memdb"

	"github.com/corral-dev/corral/structs"
)

// Tables of volumes (structs.Volume) and users' SSH keys
// (structs.UserSSHKeys); sessions are indexed by the volumes they mount.
const (
	tableVolumes = "volumes"
	tableSSHKeys = "ssh_keys"
)

// ErrVolumeExists refuses a create of a volume that exists; ErrVolumeInUse
// a delete of a volume that a live session mounts.
var (
	ErrVolumeExists = errors.New("volume exists")
	ErrVolumeInUse  = errors.New("volume in use")
)

func volumeID(v *structs.Volume) string         { return v.ID }
func volumeOwner(v *structs.Volume) string      { return v.Owner }
func sshKeysUser(k *structs.UserSSHKeys) string { return k.User }

func volumeTables() map[string]*memdb.TableSchema {
	return map[string]*memdb.TableSchema{
		tableVolumes: {Name: tableVolumes, Indexes: map[string]*memdb.IndexSchema{
			"id":    {Name: "id", Unique: true, Indexer: byField("ID", volumeID, false)},
			"owner": {Name: "owner", Indexer: byField("Owner", volumeOwner, true)},
		}},
		tableSSHKeys: {Name: tableSSHKeys, Indexes: map[string]*memdb.IndexSchema{
			"id": {Name: "id", Unique: true, Indexer: byField("User", sshKeysUser, false)},
		}},
	}
}

// sessionsByVolume indexes sessions by the IDs of the volumes they mount.
func sessionsByVolume() *memdb.IndexSchema {
	return &memdb.IndexSchema{Name: "volume", AllowMissing: true, Indexer: &memdb.StringSliceFieldIndex{Field: "Volumes"}}
}

// Volume returns one volume by ID (owner/name).
func (sn *Snapshot) Volume(id string) (*structs.Volume, error) {
	raw, err := sn.txn.First(tableVolumes, "id", id)
	if err != nil {
		return nil, err
	}
	if raw == nil {
		return nil, fmt.Errorf("no volume %q: %w", id, ErrNotFound)
	}
	return raw.(*structs.Volume), nil
}

// Volumes lists every volume by ID.
func (sn *Snapshot) Volumes() ([]*structs.Volume, error) {
	return listAll[*structs.Volume](sn.txn, tableVolumes)
}

// VolumeSessions lists the sessions (live and ended, until collected)
// that mount the volume.
func (sn *Snapshot) VolumeSessions(id string) ([]*structs.Session, error) {
	return watchedList[*structs.Session](sn.txn, nil, tableSessions, "volume", id)
}

// SSHKeys returns a user's SSH public keys (none: an empty list).
func (sn *Snapshot) SSHKeys(user string) ([]string, error) {
	raw, err := sn.txn.First(tableSSHKeys, "id", user)
	if err != nil || raw == nil {
		return nil, err
	}
	return slices.Clone(raw.(*structs.UserSSHKeys).Keys), nil
}

// allSSHKeys lists every user's keys (snapshots).
func (sn *Snapshot) allSSHKeys() ([]*structs.UserSSHKeys, error) {
	return listAll[*structs.UserSSHKeys](sn.txn, tableSSHKeys)
}

// UpsertVolume creates (refused with ErrVolumeExists when req.Create and
// it exists) or replaces a volume.
func (s *StateStore) UpsertVolume(index uint64, req *structs.VolumeUpsertRequest) error {
	if req.Volume == nil || req.Volume.ID != structs.VolumeID(req.Volume.Owner, req.Volume.Name) {
		return fmt.Errorf("volume upsert without a volume whose ID is owner/name")
	}
	w := s.write(index)
	defer w.txn.Abort()
	v := req.Volume.Copy()
	raw, err := w.txn.First(tableVolumes, "id", v.ID)
	if err != nil {
		return err
	}
	if raw != nil {
		if req.Create {
			return fmt.Errorf("volume %s: %w", v.ID, ErrVolumeExists)
		}
		v.CreateIndex = raw.(*structs.Volume).CreateIndex
	} else {
		v.CreateIndex = index
	}
	v.ModifyIndex = index
	if err := w.txn.Insert(tableVolumes, v); err != nil {
		return err
	}
	w.dirty[tableVolumes] = true
	return w.commit()
}

// DeleteVolume removes a volume unless a session that has not ended
// mounts it (ErrVolumeInUse, naming the session).
func (s *StateStore) DeleteVolume(index uint64, req *structs.VolumeDeleteRequest) error {
	w := s.write(index)
	defer w.txn.Abort()
	raw, err := w.txn.First(tableVolumes, "id", req.ID)
	if err != nil {
		return err
	}
	if raw == nil {
		return fmt.Errorf("no volume %q: %w", req.ID, ErrNotFound)
	}
	users, err := (&Snapshot{txn: w.base}).VolumeSessions(req.ID)
	if err != nil {
		return err
	}
	for _, sess := range users {
		if !sess.Status.Terminal() {
			return fmt.Errorf("volume %s is mounted by session %s (%s): destroy it first: %w", req.ID, sess.ID, sess.Status, ErrVolumeInUse)
		}
	}
	if err := w.txn.Delete(tableVolumes, raw); err != nil {
		return err
	}
	w.dirty[tableVolumes] = true
	return w.commit()
}

// SetSSHKeys replaces a user's SSH keys (none: removes the entry).
func (s *StateStore) SetSSHKeys(index uint64, req *structs.SSHKeysSetRequest) error {
	if req.User == "" {
		return fmt.Errorf("ssh keys without a user")
	}
	w := s.write(index)
	defer w.txn.Abort()
	if len(req.Keys) == 0 {
		if _, err := w.txn.DeleteAll(tableSSHKeys, "id", req.User); err != nil {
			return err
		}
	} else if err := w.txn.Insert(tableSSHKeys, &structs.UserSSHKeys{User: req.User, Keys: slices.Clone(req.Keys), ModifyIndex: index}); err != nil {
		return err
	}
	w.dirty[tableSSHKeys] = true
	return w.commit()
}
