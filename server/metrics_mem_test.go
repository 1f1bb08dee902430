package server

import (
	"fmt"
	"io"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"

	"github.com/corral-dev/corral/server/state"
	"github.com/corral-dev/corral/structs"
)

// metricsState builds a state of nSessions PENDING sessions over four
// resource groups and 100 agents (10 of them with 8 GPUs), with an event
// broker hooked on it as a server has.
func metricsState(tb testing.TB, nSessions int) *Server {
	tb.Helper()
	st, err := state.New()
	if err != nil {
		tb.Fatal(err)
	}
	s := &Server{state: st, eventBroker: newEventBroker(0), ready: make(chan struct{})}
	st.SetCommitHook(s.eventBroker.publish)
	t0 := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	idx := uint64(1)
	for i := range 100 {
		idx++
		a := &structs.Agent{ID: fmt.Sprintf("ag%03d", i), Name: fmt.Sprintf("node-%03d", i), Status: structs.AgentAlive,
			ResourceGroup: fmt.Sprintf("g%d", i%4), Drivers: []string{"exec"},
			Capacity: structs.Slots{structs.SlotCPU: structs.Whole(64), structs.SlotMem: structs.Whole(256 << 30)}}
		if i%10 == 0 {
			inv := &structs.GPUInventory{}
			for g := range 8 {
				inv.Devices = append(inv.Devices, &structs.GPU{Index: g, UUID: fmt.Sprintf("GPU-%03d-%d", i, g), MemoryBytes: 80 << 30, UtilPercent: 50})
			}
			a.GPUs = inv
		}
		if err := st.UpsertAgent(idx, &structs.AgentUpsertRequest{Agent: a, Time: t0}); err != nil {
			tb.Fatal(err)
		}
	}
	for i := range nSessions {
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

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// scrapeText gathers and encodes the metrics as /v1/metrics does.
func scrapeText(tb testing.TB, m *serverMetrics, w io.Writer) {
	fams, err := m.reg.Gather()
	if err != nil {
		tb.Fatal(err)
	}
	enc := expfmt.NewEncoder(w, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, f := range fams {
		if err := enc.Encode(f); err != nil {
			tb.Fatal(err)
		}
	}
}

func TestMetricsStateCollectorCounts(t *testing.T) {
	s := metricsState(t, 400)
	m := newServerMetrics(s)
	var out strings.Builder
	scrapeText(t, m, &out)
	text := out.String()
	for _, want := range []string{
		`corral_sessions{group="g1",status="PENDING"} 100`,
		`corral_agents{drain="false",group="g0",status="ALIVE"} 25`,
		`corral_slots_total{group="g2",slot="cpu"} 1600`,
		`corral_sessions_pending_age_seconds_count{group="g3"} 100`,
		`corral_gpu_memory_total_bytes{agent="node-010",gpu="7",uuid="GPU-010-7"} 8.589934592e+10`,
		`corral_gpu_held{agent="node-000",gpu="0",uuid="GPU-000-0"} 0`,
		`corral_events_ring_events `,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// BenchmarkMetricsMemory reports what the metrics cost in memory with N
// sessions in the state: the heap the registry adds, the heap still held
// after a scrape, and what one scrape allocates (and takes).
func BenchmarkMetricsMemory(b *testing.B) {
	for _, n := range []int{1000, 10000, 100000} {
		b.Run(fmt.Sprintf("sessions=%d", n), func(b *testing.B) {
			s := metricsState(b, n)
			h0 := heapInUse()
			m := newServerMetrics(s)
			h1 := heapInUse()
			scrapeText(b, m, io.Discard)
			h2 := heapInUse()
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			b.ResetTimer()
			for b.Loop() {
				scrapeText(b, m, io.Discard)
			}
			b.StopTimer()
			runtime.ReadMemStats(&after)
			b.ReportMetric(float64(int64(h1)-int64(h0))/1024, "KiB-registered")
			b.ReportMetric(float64(int64(h2)-int64(h0))/1024, "KiB-after-scrape")
			b.ReportMetric(float64(after.TotalAlloc-before.TotalAlloc)/float64(b.N)/1024, "KiB-alloc/scrape")
			runtime.KeepAlive(m)
		})
	}
}
