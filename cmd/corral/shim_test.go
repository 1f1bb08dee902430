package main

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/corral-dev/corral/drivers/exec/taskrun"
	"github.com/corral-dev/corral/drivers/shim"
)

// TestFindShimHelper checks that the agent uses corral-shim only when it is
// an executable of its own version, and otherwise says why not.
func TestFindShimHelper(t *testing.T) {
	for _, tc := range []struct {
		name    string
		script  string // "" : no file
		mode    os.FileMode
		want    string
		wantErr string // "" : the helper is used
	}{
		{"same version", "echo corral-shim v1", 0o755, "v1", ""},
		{"other version", "echo corral-shim v0", 0o755, "v1", `is "corral-shim v0", not version v1`},
		{"missing", "", 0, "v1", "no "},
		{"not executable", "echo corral-shim v1", 0o644, "v1", "not an executable file"},
		{"fails", "exit 3", 0o755, "v1", "exit status 3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), shimHelperName)
			if tc.script != "" {
				if err := os.WriteFile(path, []byte("#!/bin/sh\n"+tc.script+"\n"), tc.mode); err != nil {
					t.Fatal(err)
				}
			}
			got, err := findShimHelper(path, tc.want)
			switch {
			case tc.wantErr == "" && (err != nil || got != path):
				t.Fatalf("findShimHelper = %q, %v; want %q", got, err, path)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("findShimHelper = %q, %v; want an error with %q", got, err, tc.wantErr)
			}
		})
	}
}

// TestUseShimHelperFallback checks that without a corral-shim next to the
// binary the shims re-execute it, and that the agent logs why.
func TestUseShimHelperFallback(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(exe), shimHelperName)); err == nil {
		t.Skip("a corral-shim lies next to the test binary")
	}
	var buf bytes.Buffer
	useShimHelper(slog.New(slog.NewTextHandler(&buf, nil)))
	if h := shim.Helper(taskrun.Kind); h != "" {
		t.Fatalf("shims run from %s; want the agent binary", h)
	}
	if out := buf.String(); !strings.Contains(out, "level=INFO") || !strings.Contains(out, "re-exec the agent binary") || !strings.Contains(out, "reason=") {
		t.Fatalf("log %q does not say why the helper is not used", out)
	}
}
