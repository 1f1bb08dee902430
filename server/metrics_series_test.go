package server

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/corral-dev/corral/server/state"
	"github.com/corral-dev/corral/structs"
)

// seriesState is a state of nAgents agents (every fourth with 8 GPUs)
// over four groups and 1000 sessions, with an event broker as a server.
func seriesState(tb testing.TB, nAgents int) *Server {
	tb.Helper()
	st, err := state.New()
	if err != nil {
		tb.Fatal(err)
	}
	s := &Server{state: st, eventBroker: newEventBroker(0), ready: make(chan struct{})}
	st.SetCommitHook(s.eventBroker.publish)
	t0 := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	idx := uint64(1)
	for i := range nAgents {
		idx++
		a := &structs.Agent{ID: fmt.Sprintf("ag%05d", i), Name: fmt.Sprintf("node-%05d", i), Status: structs.AgentAlive,
			ResourceGroup: fmt.Sprintf("g%d", i%4), Drivers: []string{"exec"},
			Capacity: structs.Slots{structs.SlotCPU: structs.Whole(64), structs.SlotMem: structs.Whole(256 << 30)}}
		if i%4 == 0 {
			inv := &structs.GPUInventory{}
			for g := range 8 {
				inv.Devices = append(inv.Devices, &structs.GPU{Index: g, UUID: fmt.Sprintf("GPU-%05d-%d", i, g), MemoryBytes: 80 << 30, UtilPercent: 50})
			}
			a.GPUs = inv
		}
		if err := st.UpsertAgent(idx, &structs.AgentUpsertRequest{Agent: a, Time: t0}); err != nil {
			tb.Fatal(err)
		}
	}
	for i := range 1000 {
		idx++
		id := fmt.Sprintf("s%06d", i)
		sess := &structs.Session{ID: id, Type: structs.SessionTypeBatch, ResourceGroup: fmt.Sprintf("g%d", i%4), Owner: "u"}
		k := &structs.Kernel{ID: id + "-k", SessionID: id, Role: "main", Idx: 1, Hostname: "main1", Driver: "exec",
			Command: []string{"true"}, Resources: structs.Slots{structs.SlotCPU: structs.Whole(1)}}
		if err := st.EnqueueSession(idx, &structs.SessionEnqueueRequest{Session: sess, Kernels: []*structs.Kernel{k}, Time: t0}); err != nil {
			tb.Fatal(err)
		}
	}
	return s
}

// TestMetricsMemoryFigure logs the memory cost of the metrics against the
// number of series: N agents' worth of series (per-GPU gauges on every
// fourth agent), the heap the registry holds after a scrape, per series,
// and what one scrape allocates. Figures only: CORRAL_FIGURES=1.
func TestMetricsMemoryFigure(t *testing.T) {
	if os.Getenv("CORRAL_FIGURES") == "" {
		t.Skip("figures only: set CORRAL_FIGURES=1")
	}
	for _, n := range []int{10, 100, 1000, 4000} {
		s := seriesState(t, n)
		h0 := heapInUse()
		m := newServerMetrics(s)
		var out bytes.Buffer
		scrapeText(t, m, &out)
		series := 0
		for _, l := range strings.Split(out.String(), "\n") {
			if l != "" && !strings.HasPrefix(l, "#") {
				series++
			}
		}
		textLen := out.Len()
		out = bytes.Buffer{} // the text is not the registry's
		h1 := heapInUse()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		const scrapes = 5
		start := time.Now()
		for range scrapes {
			scrapeText(t, m, io.Discard)
		}
		took := time.Since(start) / scrapes
		runtime.ReadMemStats(&after)
		held := int64(h1) - int64(h0)
		t.Logf("FIGURE metrics memory: %d agents -> %d series, %d KiB text; heap held by the registry after a scrape %d KiB (%d B/series); one scrape allocates %d KiB and takes %v",
			n, series, textLen/1024, held/1024, held/int64(max(series, 1)), (after.TotalAlloc-before.TotalAlloc)/scrapes/1024, took.Round(time.Microsecond))
		runtime.KeepAlive(m)
	}
}
