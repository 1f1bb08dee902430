package exec

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/corral-dev/corral/plugins/drivers/testutils"
)

// TestLogCapped checks that exec and host kernels' logs hold at most the
// cap, the log and its .1 together, and keep the newest output.
func TestLogCapped(t *testing.T) {
	requireRoot(t)
	const limit = 64 << 10
	for _, d := range []*Driver{New(slogWarn(), WithMaxLogSize(limit)), NewHost(slogWarn(), WithMaxLogSize(limit))} {
		t.Run(d.Name(), func(t *testing.T) {
			cfg := testutils.TaskConfig(t, "/bin/sh", "-c",
				`head -c 200000 /dev/zero | tr '\0' x; echo; echo END; head -c 200000 /dev/zero | tr '\0' y >&2; echo ERR >&2`)
			res, stdout, stderr := runToEnd(t, d, cfg)
			if res.ExitCode != 0 || res.Err != nil {
				t.Fatalf("result = %+v", res)
			}
			for _, p := range []string{cfg.StdoutPath, cfg.StderrPath} {
				var total int64
				for _, f := range []string{p, p + ".1"} {
					fi, err := os.Stat(f)
					if err != nil {
						t.Fatal(err)
					}
					total += fi.Size()
				}
				if total > limit || total < limit/2 {
					t.Errorf("%s and its .1 hold %d bytes, want between %d and %d", filepath.Base(p), total, limit/2, limit)
				}
			}
			if !strings.HasSuffix(stdout, "xxxx\nEND\n") {
				t.Errorf("stdout log does not end with the output's end: ...%q", stdout[max(0, len(stdout)-20):])
			}
			if !strings.HasSuffix(stderr, "yyyyERR\n") {
				t.Errorf("stderr log does not end with the output's end: ...%q", stderr[max(0, len(stderr)-20):])
			}
		})
	}
}

// TestLogUncapped checks that WithMaxLogSize(0) keeps the old behaviour:
// the kernel appends to its log files directly and nothing rotates.
func TestLogUncapped(t *testing.T) {
	requireRoot(t)
	d := New(slogWarn(), WithMaxLogSize(0))
	cfg := testutils.TaskConfig(t, "/bin/sh", "-c", `head -c 200000 /dev/zero | tr '\0' x; echo END`)
	_, stdout, _ := runToEnd(t, d, cfg)
	if len(stdout) != 200004 {
		t.Errorf("stdout log holds %d bytes, want all 200004", len(stdout))
	}
	if _, err := os.Stat(cfg.StdoutPath + ".1"); err == nil {
		t.Error("an uncapped log rotated")
	}
}

// TestLogCopiedWhileAgentAway checks that the shim, not the agent, copies
// a capped log: output written after the agent died reaches the log.
func TestLogCopiedWhileAgentAway(t *testing.T) {
	requireRoot(t)
	cfg := testutils.TaskConfig(t, "/bin/sh", "-c", "while [ ! -e release ]; do sleep 0.02; done; head -c 100000 /dev/zero | tr '\\0' z; echo END; exit 3")
	h, _ := startInFakeAgent(t, cfg)
	if err := os.WriteFile(filepath.Join(cfg.WorkDir, "release"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	d := recoverTask(t, h)
	res := testutils.WaitResult(t, d, cfg.ID, testTimeout)
	if res.ExitCode != 3 || res.Err != nil {
		t.Fatalf("result = %+v, want exit code 3", res)
	}
	if out := testutils.ReadLog(t, cfg.StdoutPath); len(out) != 100004 || !strings.HasSuffix(out, "zzEND\n") {
		t.Errorf("stdout log holds %d bytes (...%q), want all 100004 ending in END", len(out), out[max(0, len(out)-20):])
	}
}
