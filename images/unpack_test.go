package images

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
)

// maliciousLayers are layers that try to write outside the root filesystem.
// outside is a directory next to (not inside) the root.
func maliciousLayers(outside string) map[string][]entry {
	return map[string][]entry{
		"dot-dot entry": {
			file("../escape", 0o644, "pwned"),
		},
		"dot-dot deep entry": {
			dir("a/", 0o755),
			file("a/../../escape", 0o644, "pwned"),
		},
		"absolute symlink parent": {
			// etc -> / then etc/<file>: must never reach the host's /etc.
			symlink("etc", "/"),
			file("etc/corral-images-test-canary", 0o644, "pwned"),
		},
		"symlink parent to outside dir": {
			symlink("out", outside),
			file("out/escape", 0o644, "pwned"),
		},
		"relative symlink parent climbing out": {
			symlink("up", "../../../../../../../../.."+outside),
			file("up/escape", 0o644, "pwned"),
		},
		"symlink parent dir entry": {
			symlink("out", outside),
			dir("out/sub/", 0o755),
		},
		"hardlink to /etc/shadow": {
			hardlink("shadow", "/etc/shadow"),
		},
		"hardlink climbing out": {
			hardlink("shadow", "../../../../../../../../../etc/shadow"),
		},
		"hardlink through symlink": {
			symlink("hostetc", "/etc"),
			hardlink("shadow", "hostetc/shadow"),
		},
		"whiteout through symlink": {
			symlink("out", outside),
			whiteout("out/.wh.keep"),
		},
		"opaque through symlink": {
			symlink("out", outside),
			whiteout("out/.wh..wh..opq"),
		},
	}
}

// checkOutside fails if anything changed outside the root.
func checkOutside(t *testing.T, outside string) {
	t.Helper()
	entries, err := os.ReadDir(outside)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name() != "keep" {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("outside dir now holds %v, want only keep", names)
	}
	if _, err := os.Lstat("/etc/corral-images-test-canary"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("wrote into the host's /etc: %v", err)
		os.Remove("/etc/corral-images-test-canary")
	}
	if _, err := os.Lstat(filepath.Join(filepath.Dir(outside), "escape")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("wrote next to the root: %v", err)
	}
}

func TestUnpackRejectsMaliciousLayers(t *testing.T) {
	for name, entries := range maliciousLayers("") {
		t.Run(name, func(t *testing.T) {
			base := t.TempDir()
			root := filepath.Join(base, "root")
			outside := filepath.Join(base, "outside")
			for _, d := range []string{root, outside} {
				if err := os.Mkdir(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.WriteFile(filepath.Join(outside, "keep"), []byte("keep"), 0o644); err != nil {
				t.Fatal(err)
			}
			entries = maliciousLayers(outside)[name]
			u, err := newUnpacker(root, slog.New(slog.DiscardHandler), unpackLimits{})
			if err != nil {
				t.Fatal(err)
			}
			defer u.Close()
			err = u.apply(context.Background(), bytes.NewReader(tarBytes(t, entries...)))
			if !errors.Is(err, ErrInvalidLayer) {
				t.Errorf("apply: %v, want ErrInvalidLayer", err)
			}
			checkOutside(t, outside)
		})
	}
}

func TestPullRejectsMaliciousLayers(t *testing.T) {
	reg := newTestRegistry(t)
	base := t.TempDir()
	outside := filepath.Join(base, "outside")
	if err := os.Mkdir(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(outside, "keep"), []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(base, "store")
	s := newTestStore(t, dir)
	for _, name := range []string{"dot-dot entry", "absolute symlink parent", "hardlink to /etc/shadow", "symlink parent to outside dir"} {
		layer := tarLayer(t, maliciousLayers(outside)[name]...)
		ref := reg.ref("evil/image:latest")
		reg.push(ref, imageOf(t, testConfig, tarLayer(t, file("ok", 0o644, "ok")), layer))
		_, err := s.Pull(testContext(t), ref, nil)
		if !errors.Is(err, ErrInvalidLayer) {
			t.Errorf("%s: pull %v, want ErrInvalidLayer", name, err)
		}
		checkOutside(t, outside)
	}
	// Nothing half-unpacked is left, and nothing looks pulled.
	for _, sub := range []string{"rootfs", "tmp"} {
		entries, err := os.ReadDir(filepath.Join(dir, sub))
		if err != nil {
			t.Fatal(err)
		}
		if len(entries) != 0 {
			t.Errorf("%s holds %d entries after failed pulls", sub, len(entries))
		}
	}
	if list, _ := s.List(); len(list) != 0 {
		t.Errorf("List = %v after failed pulls", list)
	}
	if _, err := filepath.Glob(filepath.Join(base, "*", "escape")); err != nil {
		t.Fatal(err)
	}
	matches, _ := filepath.Glob(filepath.Join(dir, "*", "escape"))
	if len(matches) != 0 {
		t.Errorf("escaped files: %v", matches)
	}
}

func TestUnpackSafeOddities(t *testing.T) {
	root := t.TempDir()
	u, err := newUnpacker(root, slog.New(slog.DiscardHandler), unpackLimits{})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	layer1 := tarBytes(t,
		file("/abs/file", 0o644, "absolute names stay inside"),
		file("a/./b/../c", 0o644, "cleaned"),
		symlink("link-to-root", "/"),
		symlink("dangling", "../../../nowhere"),
		file("implicit/parents/file", 0o644, "parents made"),
		file("victim", 0o644, "old"),
	)
	layer2 := tarBytes(t,
		// A file written over a symlink replaces the link, not its target.
		file("link-to-root", 0o644, "replaced the link"),
		symlink("victim", "/etc/passwd"),
		file("dangling", 0o644, "replaced"),
	)
	for _, l := range [][]byte{layer1, layer2} {
		if err := u.apply(context.Background(), bytes.NewReader(l)); err != nil {
			t.Fatal(err)
		}
	}
	for name, want := range map[string]string{
		"abs/file":              "absolute names stay inside",
		"a/c":                   "cleaned",
		"implicit/parents/file": "parents made",
		"link-to-root":          "replaced the link",
		"dangling":              "replaced",
	} {
		b, err := os.ReadFile(filepath.Join(root, name))
		if err != nil || string(b) != want {
			t.Errorf("%s = %q (%v), want %q", name, b, err, want)
		}
	}
	if target, err := os.Readlink(filepath.Join(root, "victim")); err != nil || target != "/etc/passwd" {
		t.Errorf("victim -> %q (%v)", target, err)
	}
}
