package main

import (
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/pkg/sftp"
)

// rootClient serves dir through rootHandlers over a pipe.
func rootClient(t *testing.T, dir string) *sftp.Client {
	t.Helper()
	rt, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	a, b := net.Pipe()
	srv := sftp.NewRequestServer(a, newRootHandlers(rt))
	go func() { _ = srv.Serve() }()
	c, err := sftp.NewClientPipe(b, b)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); srv.Close(); rt.Close() })
	return c
}

func TestSFTPRootKeepsPathsInside(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "vol")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(base, "secret"), []byte("outside"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(base, "secret"), filepath.Join(dir, "escape")); err != nil {
		t.Fatal(err)
	}
	c := rootClient(t, dir)

	f, err := c.Create("/a/../b.txt")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte("inside")); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if b, err := os.ReadFile(filepath.Join(dir, "b.txt")); err != nil || string(b) != "inside" {
		t.Fatalf("an absolute path did not land in the root: %q, %v", b, err)
	}
	if err := c.Mkdir("/d"); err != nil {
		t.Fatal(err)
	}
	if err := c.Rename("/b.txt", "/d/c.txt"); err != nil {
		t.Fatal(err)
	}
	ents, err := c.ReadDir("/d")
	if err != nil || len(ents) != 1 || ents[0].Name() != "c.txt" {
		t.Fatalf("ReadDir /d = %v, %v", ents, err)
	}
	for _, p := range []string{"/../secret", "../secret", "/escape"} {
		if r, err := c.Open(p); err == nil {
			b, _ := io.ReadAll(r)
			r.Close()
			if string(b) == "outside" {
				t.Errorf("%s read a file outside the root", p)
			}
		}
	}
	if err := c.Remove("/d/c.txt"); err != nil {
		t.Fatal(err)
	}
}
