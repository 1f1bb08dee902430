package state_test

import (
	"fmt"
	"os"
	"runtime"
	"slices"
	"syscall"
	"runtime/pprof"
	"strconv"
	"testing"
	"time"

	"github.com/corral-dev/corral/server/scheduler"
	"github.com/corral-dev/corral/server/state"
	"github.com/corral-dev/corral/structs"
)

func scratchSetup(t testing.TB, nSessions, nAgents int, sel string, t0 time.Time) (*state.StateStore, uint64) {
	s, _ := state.New()
	idx := uint64(1)
	keys := []*structs.AccessKey{}
	for i := range 20 {
		keys = append(keys, &structs.AccessKey{AccessKey: fmt.Sprintf("AK%d", i), SecretHash: "h", User: "u", Policy: "p"})
	}
	s.UpsertConfig(idx, &structs.ConfigUpsertRequest{
		Groups:   []*structs.ResourceGroup{{Name: "default", SessionSelector: "fifo", AgentSelector: sel}},
		Policies: []*structs.ResourcePolicy{{Name: "p", MaxConcurrentSessions: 100000, TotalResourceSlots: structs.Slots{structs.SlotCPU: structs.Whole(1 << 20)}}},
		Keys:     keys, Time: t0,
	})
	for i := range nAgents {
		idx++
		a := &structs.Agent{ID: fmt.Sprintf("ag%05d", i), Name: fmt.Sprintf("ag%05d", i), Status: structs.AgentAlive, ResourceGroup: "default",
			Drivers: []string{"exec"}, Capacity: cpuMem(int64(8+i%24), int64(32+i%64))}
		s.UpsertAgent(idx, &structs.AgentUpsertRequest{Agent: a, Time: t0})
	}
	for i := range nSessions {
		idx++
		id := fmt.Sprintf("s%05d", i)
		sess := &structs.Session{ID: id, Type: structs.SessionTypeBatch, ResourceGroup: "default", AccessKey: fmt.Sprintf("AK%d", i%20)}
		k := &structs.Kernel{ID: id + "-k", SessionID: id, Role: "main", Idx: 1, Hostname: "main1", Driver: "exec",
			Command: []string{"true"}, Resources: cpuMem(int64(1+i%4), int64(1+i%8))}
		s.EnqueueSession(idx, &structs.SessionEnqueueRequest{Session: sess, Kernels: []*structs.Kernel{k}, Time: t0})
	}
	return s, idx
}

func TestScratchProfile(t *testing.T) {
	if os.Getenv("SCRATCH") == "" {
		t.Skip()
	}
	agents, _ := strconv.Atoi(os.Getenv("AGENTS"))
	sel := os.Getenv("SEL")
	ch, _ := strconv.Atoi(os.Getenv("CHUNK"))
	reps := 9
	var per, cpu []float64
	t0 := time.Date(2026, 11, 22, 8, 0, 0, 0, time.UTC)
	var f *os.File
	var tot, apply time.Duration
	var gcs uint32
	var alloc uint64
	n := 0
	for r := 0; r < reps; r++ {
		s, idx := scratchSetup(t, 10000, agents, sel, t0)
		runtime.GC()
		var m0, m1 runtime.MemStats
		runtime.ReadMemStats(&m0)
		if p := os.Getenv("PROF"); p != "" {
			f, _ = os.Create(fmt.Sprintf("%s.%d", p, r))
			pprof.StartCPUProfile(f)
		}
		start := time.Now()
		var ru0, ru1 syscall.Rusage
		syscall.Getrusage(0, &ru0)
		in, _, _, _ := s.Snapshot().SchedulerInput(nil, t0)
		res := scheduler.Plan(in)
		mid := time.Now()
		for _, part := range scheduler.SplitPlan(res.Plan, ch) {
			idx++
			out, err := s.ApplyPlan(idx, &structs.PlanApplyRequest{Plan: part, Time: t0})
			if err != nil || len(out.Rejected) > 0 {
				t.Fatal(err, out.Rejected)
			}
			n += len(out.Applied)
		}
		tot += time.Since(start)
		per = append(per, time.Since(start).Seconds()*1000)
		syscall.Getrusage(0, &ru1)
		cpu = append(cpu, float64((ru1.Utime.Nano()+ru1.Stime.Nano())-(ru0.Utime.Nano()+ru0.Stime.Nano()))/1e6)
		if f != nil {
			pprof.StopCPUProfile()
			f.Close()
		}
		apply += time.Since(mid)
		runtime.ReadMemStats(&m1)
		gcs += m1.NumGC - m0.NumGC
		alloc += m1.TotalAlloc - m0.TotalAlloc
		if r == reps-1 {
			t.Logf("heap after: %d MB", m1.HeapAlloc>>20)
		}
	}
	slices.Sort(per)
	slices.Sort(cpu)
	t.Logf("median cpu %.1f ms (min %.1f)", cpu[len(cpu)/2], cpu[0])
	t.Logf("median pass %.1f ms (min %.1f max %.1f)", per[len(per)/2], per[0], per[len(per)-1])
	t.Logf("agents=%d %s chunk=%d: %.0f placements/s, total %.1f ms, apply %.1f ms, GCs %.1f, alloc %.1f MB per pass",
		agents, sel, ch, float64(n)/tot.Seconds(), tot.Seconds()*1000/float64(reps), apply.Seconds()*1000/float64(reps), float64(gcs)/float64(reps), float64(alloc)/float64(reps)/1e6)
}
