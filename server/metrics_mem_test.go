package server

import (
	"fmt"
	"io"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
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

// TestKernelStartsCountedFromHistory: one apply that takes a kernel from
// SCHEDULED through RUNNING to TERMINATED counts one start with its
// latency; a return from RESTARTING is no start; ERROR is a failure.
func TestKernelStartsCountedFromHistory(t *testing.T) {
	s := metricsState(t, 0)
	close(s.ready)
	m := newServerMetrics(s)
	t0 := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	at := func(sec int) time.Time { return t0.Add(time.Duration(sec) * time.Second) }
	hist := func(statuses ...structs.KernelStatus) []structs.StatusChange {
		var h []structs.StatusChange
		for i, st := range statuses {
			h = append(h, structs.StatusChange{Status: string(st), Time: at(i)})
		}
		return h
	}
	prev := &structs.Kernel{ID: "k", Driver: "exec", Status: structs.KernelScheduled, ModifyIndex: 5,
		History: hist(structs.KernelPending, structs.KernelScheduled)}
	next := &structs.Kernel{ID: "k", Driver: "exec", Status: structs.KernelTerminated, ModifyIndex: 6,
		History: hist(structs.KernelPending, structs.KernelScheduled, structs.KernelPreparing, structs.KernelRunning, structs.KernelTerminated)}
	m.observeChanges(s, []state.Change{{Table: state.TableKernels, Key: "k", Obj: next, Prev: prev}})
	if v := counterValue(t, m.kernelStarts.WithLabelValues("exec")); v != 1 {
		t.Fatalf("starts %v, want 1", v)
	}
	// SCHEDULED at 1 s, RUNNING at 3 s.
	var h dto.Metric
	if err := m.kernelStartLatency.WithLabelValues("exec").(prometheus.Histogram).Write(&h); err != nil || h.Histogram.GetSampleCount() != 1 || h.Histogram.GetSampleSum() != 2 {
		t.Fatalf("start latency: %v %v", h.Histogram, err)
	}
	restarted := &structs.Kernel{ID: "k", Driver: "exec", Status: structs.KernelRunning, ModifyIndex: 7,
		History: append(hist(structs.KernelPending, structs.KernelScheduled, structs.KernelRunning, structs.KernelRestarting), structs.StatusChange{Status: string(structs.KernelRunning), Time: at(9)})}
	before := &structs.Kernel{ID: "k", Driver: "exec", Status: structs.KernelRestarting, ModifyIndex: 6, History: restarted.History[:4]}
	failed := &structs.Kernel{ID: "k2", Driver: "runc", Status: structs.KernelError, ModifyIndex: 7, History: hist(structs.KernelPending, structs.KernelError)}
	m.observeChanges(s, []state.Change{{Table: state.TableKernels, Key: "k", Obj: restarted, Prev: before}, {Table: state.TableKernels, Key: "k2", Obj: failed}})
	if v := counterValue(t, m.kernelStarts.WithLabelValues("exec")); v != 1 {
		t.Fatalf("starts after a restart %v, want still 1", v)
	}
	if v := counterValue(t, m.kernelFailures.WithLabelValues("runc")); v != 1 {
		t.Fatalf("runc failures %v, want 1", v)
	}
	if d, ok := startLatency(next.History[:4]); !ok || d != 2*time.Second {
		t.Fatalf("start latency %v %v, want 2s", d, ok)
	}
}

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.Counter.GetValue()
}
