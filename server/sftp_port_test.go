package server

import (
	"maps"
	"sync"
	"testing"

	"github.com/corral-dev/corral/structs"
)

func TestPickSFTPPortSkipsUsed(t *testing.T) {
	used := map[int]bool{sftpPortBase + 5: true, sftpPortBase + 6: true}
	if p, ok := pickSFTPPort(used, 5); !ok || p != sftpPortBase+7 {
		t.Fatalf("pick from a held port: got %d %v, want %d", p, ok, sftpPortBase+7)
	}
	used[sftpPortBase+sftpPorts-1] = true
	if p, ok := pickSFTPPort(used, sftpPorts-1); !ok || p != sftpPortBase {
		t.Fatalf("pick at the end wraps: got %d %v, want %d", p, ok, sftpPortBase)
	}
	for i := 0; i < sftpPorts; i++ {
		used[sftpPortBase+i] = true
	}
	if p, ok := pickSFTPPort(used, 0); ok {
		t.Fatalf("all held: got port %d, want none", p)
	}
}

// TestSFTPReservationsConcurrent: creates at the same moment draw
// different ports; a released port is drawn again; a port a committed
// session holds (seen in the fresh state read under the lock) is not.
func TestSFTPReservationsConcurrent(t *testing.T) {
	var r sftpReservations
	var mu sync.Mutex
	live := map[int]bool{sftpPortBase: true}
	used := func() (map[int]bool, error) {
		mu.Lock()
		defer mu.Unlock()
		return maps.Clone(live), nil
	}
	const n = 50
	ports := make(chan int, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p, ok, err := r.reserve(used, 0) // the same start
			if !ok || err != nil {
				t.Error("no port", err)
			}
			ports <- p
		}()
	}
	wg.Wait()
	close(ports)
	seen := map[int]bool{}
	for p := range ports {
		if seen[p] || p == sftpPortBase {
			t.Fatalf("port %d drawn twice or held by a live session", p)
		}
		seen[p] = true
	}
	sftpKernel := func(port int) []*structs.Kernel {
		return []*structs.Kernel{{SFTP: &structs.SFTPServer{Port: port}}}
	}
	first := sftpPortBase + 1
	r.release(sftpKernel(first))
	r.release([]*structs.Kernel{{}}) // not an SFTP session: nothing
	if p, _, _ := r.reserve(used, 1); p != first {
		t.Fatalf("after release: drew %d, want the released %d", p, first)
	}
	// A create committed and released its port: the state holds it now.
	second := sftpPortBase + 2
	mu.Lock()
	live[second] = true
	mu.Unlock()
	r.release(sftpKernel(second))
	if p, _, _ := r.reserve(used, 2); p != sftpPortBase+n+1 {
		t.Fatalf("drew %d, want %d (the committed port %d is live)", p, sftpPortBase+n+1, second)
	}
}
