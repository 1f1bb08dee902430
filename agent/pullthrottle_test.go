package agent

import (
	"testing"
	"time"
)

// TestPullThrottle: pull progress of a kernel is reported at most once per
// pullReportInterval, however often the download moves (the image store
// calls back every MiB), and never for the last byte (the "pulled" line
// follows).
func TestPullThrottle(t *testing.T) {
	var th pullThrottle
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	reports := 0
	// 64 MiB in 1 MiB steps over 20 s.
	for i := int64(0); i <= 64; i++ {
		now := t0.Add(time.Duration(i) * 20 * time.Second / 64)
		if th.due(now, i<<20, 64<<20) {
			reports++
		}
	}
	if max := int(20 * time.Second / pullReportInterval); reports == 0 || reports > max {
		t.Fatalf("%d progress reports over 20 s, want 1..%d (one per %s)", reports, max, pullReportInterval)
	}
	if pullReportInterval < 2*time.Second {
		t.Fatalf("pullReportInterval %s: want at least 2s", pullReportInterval)
	}
}
