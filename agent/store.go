package agent

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/corral-dev/corral/plugins/drivers"
	"github.com/corral-dev/corral/structs"
)

// kernelsBucket holds one record per kernel the agent started and has not
// yet seen through to a delivered final report.
var kernelsBucket = []byte("kernels")

// kernelRecord is what the agent persists about one kernel: enough to
// reattach to it after a restart (the driver's handle) and the final status
// report if the kernel ended before the server acknowledged it.
type kernelRecord struct {
	Kernel *structs.Kernel       `json:"kernel"`
	Handle *drivers.TaskHandle   `json:"handle,omitempty"`
	Final  *structs.KernelUpdate `json:"final,omitempty"`
}

// localStore is the agent's bbolt file of kernel records.
type localStore struct{ db *bolt.DB }

func openLocalStore(dataDir string) (*localStore, error) {
	db, err := bolt.Open(filepath.Join(dataDir, "agent.db"), 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("agent state file: %w (is another agent using %s?)", err, dataDir)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		if _, err := tx.CreateBucketIfNotExists(kernelsBucket); err != nil {
			return err
		}
		_, err := tx.CreateBucketIfNotExists(startedBucket)
		return err
	}); err != nil {
		db.Close()
		return nil, err
	}
	// Kernels start and end concurrently: their record writes share one
	// transaction (and one fsync) when they come within a couple of ms.
	db.MaxBatchDelay = 2 * time.Millisecond
	return &localStore{db: db}, nil
}

func (s *localStore) put(rec *kernelRecord) error {
	buf, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	return s.db.Batch(func(tx *bolt.Tx) error {
		return tx.Bucket(kernelsBucket).Put([]byte(rec.Kernel.ID), buf)
	})
}

func (s *localStore) delete(id string) error {
	return s.db.Batch(func(tx *bolt.Tx) error {
		return tx.Bucket(kernelsBucket).Delete([]byte(id))
	})
}

func (s *localStore) all() ([]*kernelRecord, error) {
	var out []*kernelRecord
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(kernelsBucket).ForEach(func(k, v []byte) error {
			rec := &kernelRecord{}
			if err := json.Unmarshal(v, rec); err != nil || rec.Kernel == nil {
				return fmt.Errorf("agent state: kernel %s: unreadable record: %v", k, err)
			}
			out = append(out, rec)
			return nil
		})
	})
	return out, err
}

func (s *localStore) close() error { return s.db.Close() }
