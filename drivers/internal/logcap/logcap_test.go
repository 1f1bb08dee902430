package logcap

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestCappedLogRotates(t *testing.T) {
	p := filepath.Join(t.TempDir(), "out.log")
	l, err := Open(p, 20)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"0123456789", "abcdefghij", "ABCDEFGHIJ", "xy"} {
		if _, err := l.Write([]byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l.Write([]byte("0123456789abcdefghijklmnopqrstuvwxyz")); err != nil {
		t.Fatal(err)
	}
	l.Close()
	for f, want := range map[string]string{p: "uvwxyz", p + ".1": "klmnopqrst"} {
		if b, _ := os.ReadFile(f); string(b) != want {
			t.Errorf("%s = %q, want %q", filepath.Base(f), b, want)
		}
	}
}

func TestPipesCapAndDrain(t *testing.T) {
	dir := t.TempDir()
	out, errp := filepath.Join(dir, "stdout"), filepath.Join(dir, "stderr")
	lp, err := NewPipes(out, errp, 100)
	if err != nil {
		t.Fatal(err)
	}
	w, e := lp.Stdout, lp.Stderr
	for i := 0; i < 50; i++ {
		if _, err := w.WriteString("0123456789"); err != nil {
			t.Fatal(err)
		}
	}
	_, _ = w.WriteString("END")
	_, _ = e.WriteString("err")
	lp.Started()
	lp.Drain(5 * time.Second)
	b, _ := os.ReadFile(out)
	b1, _ := os.ReadFile(out + ".1")
	if n := len(b) + len(b1); n > 100 {
		t.Errorf("stdout and .1 hold %d bytes, over the cap", n)
	}
	if !strings.HasSuffix(string(b), "END") {
		t.Errorf("stdout = %q, want it to end with END", b)
	}
	if b, _ := os.ReadFile(errp); string(b) != "err" {
		t.Errorf("stderr = %q", b)
	}
}
