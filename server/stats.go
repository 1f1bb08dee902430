package server

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"

	"github.com/corral-dev/corral/api"
)

// systemStats answers GET /v1/system/stats (admins): the size of this
// server's state, as rows and as a raft snapshot would store it, and its
// memory after a Go GC. For soak benchmarks and operators watching growth.
func (s *Server) systemStats(w http.ResponseWriter, r *http.Request) (any, error) {
	if err := requireAdmin(r); err != nil {
		return nil, err
	}
	sn := s.state.Snapshot()
	d, err := sn.Dump()
	if err != nil {
		return nil, err
	}
	var cw countWriter
	if err := json.NewEncoder(&cw).Encode(d); err != nil {
		return nil, err
	}
	out := &api.SystemStats{SnapshotBytes: cw.n}
	out.Sessions, out.Kernels = len(d.Sessions), len(d.Kernels)
	// A full GC that also returns freed memory to the OS: RSS then shows
	// what the server holds, not what the runtime has yet to give back.
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	out.HeapBytes = ms.HeapInuse
	out.RSSBytes, out.AnonRSSBytes = procStatus("VmRSS:"), procStatus("RssAnon:")
	return out, nil
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

var _ io.Writer = (*countWriter)(nil)

// procStatus reads a size line ("VmRSS:", "RssAnon:") of this process's
// /proc status in bytes (0 where /proc is absent).
func procStatus(field string) uint64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field); ok {
			kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}
