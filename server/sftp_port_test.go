package server

import (
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

// TestSFTPReservationsConcurrent: creates that see the same snapshot at
// once draw different ports; a released port is drawn again.
func TestSFTPReservationsConcurrent(t *testing.T) {
	var r sftpReservations
	const n = 50
	ports := make(chan int, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p, ok := r.reserve(map[int]bool{sftpPortBase: true}, 0) // the same snapshot, the same start
			if !ok {
				t.Error("no port")
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
	first := sftpPortBase + 1
	r.release(&structs.Session{ServicePorts: []structs.ServicePort{{Name: structs.SFTPPortName, Port: first}}})
	r.release(nil)
	if p, _ := r.reserve(map[int]bool{}, 1); p != first {
		t.Fatalf("after release: drew %d, want the released %d", p, first)
	}
	if p, _ := r.reserve(map[int]bool{}, 1); p != sftpPortBase+n+1 {
		t.Fatalf("next draw %d, want %d", p, sftpPortBase+n+1)
	}
}
