package exec

import (
	"errors"
	"os"
	"syscall"
	"testing"

	"github.com/corral-dev/corral/plugins/drivers"
)

func TestParseProcStat(t *testing.T) {
	// Fields 3.. of a real line; the name may hold spaces and parentheses.
	rest := " S 1 4242 4242 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 1 0 987654 2240512 220 18446744073709551615"
	tests := []struct {
		name string
		in   string
		want procStat
		err  bool
	}{
		{"plain", "4242 (sleep)" + rest, procStat{State: 'S', Pgid: 4242, CPUTicks: 12, StartTime: 987654}, false},
		{"odd name", "4242 (a) b (c)" + rest, procStat{State: 'S', Pgid: 4242, CPUTicks: 12, StartTime: 987654}, false},
		{"no name", "4242 sleep S 1", procStat{}, true},
		{"short", "4242 (sleep) S 1 2", procStat{}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseProcStat(tc.in)
			if (err != nil) != tc.err {
				t.Fatalf("err = %v, want error %v", err, tc.err)
			}
			if got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestReadProcStatSelf(t *testing.T) {
	ps, err := readProcStat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if ps.Pgid != syscall.Getpgrp() || ps.StartTime == 0 {
		t.Errorf("self = %+v, want pgid %d and a start time", ps, syscall.Getpgrp())
	}
	if !alive(os.Getpid(), ps.StartTime) || alive(os.Getpid(), ps.StartTime+1) {
		t.Error("alive does not check the start time")
	}
	if _, err := readProcStat(1 << 30); !errors.Is(err, errNoProcess) {
		t.Errorf("missing pid: err = %v", err)
	}
	if rss, err := readRSS(os.Getpid()); err != nil || rss == 0 {
		t.Errorf("readRSS = %d, %v", rss, err)
	}
}

func TestLookPath(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name, prog, path, want string
		err                    bool
	}{
		{"in PATH", "sh", "/nonexistent:/bin", "/bin/sh", false},
		{"relative PATH entries skipped", "sh", ".:bin", "", true},
		{"absolute", "/bin/sh", "", "/bin/sh", false},
		{"relative to dir", "./x", basePath, dir + "/x", true}, // x does not exist
		{"missing", "corral-nope", basePath, "", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := lookPath(tc.prog, tc.path, dir)
			if (err != nil) != tc.err {
				t.Fatalf("err = %v, want error %v", err, tc.err)
			}
			if err == nil && got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestEnvList(t *testing.T) {
	cfg := &drivers.TaskConfig{WorkDir: "/w", Env: map[string]string{"B": "2", "A": "1", "HOME": "/h"}}
	got := envList(taskEnv(cfg))
	want := []string{"A=1", "B=2", "HOME=/h", "PATH=" + basePath}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("got %v, want %v", got, want)
		}
	}
}
