// Package logcap keeps a kernel's output logs under a size cap: a capped
// log file rotates to one older generation (.1) at half the cap, and Pipes
// carries a process's stdout and stderr through pipes into such files. It
// imports only the standard library, so that the drivers' light shim
// binaries can use it.
package logcap

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// DefaultMaxLogSize is how many bytes of each of a kernel's output streams
// the drivers keep on disk unless told otherwise.
const DefaultMaxLogSize = 100 << 20

// DrainTimeout bounds how long the end of a process waits for the last of
// its output to reach the log files.
const DrainTimeout = 2 * time.Second

// Log is an append-only log file that holds at most max bytes on disk
// together with its one older generation: once the file reaches max/2
// bytes it is renamed to path.1 (replacing the older one) and a new file
// begins, so that the last max/2 to max bytes of output are kept.
type Log struct {
	path string
	half int64
	f    *os.File
	size int64
}

// Open opens path for appending (creating it and its directory), capped
// at max bytes; max <= 0 means no cap, and an empty path discards the
// output.
func Open(path string, max int64) (*Log, error) {
	f, err := OpenFile(path)
	if err != nil {
		return nil, err
	}
	l := &Log{path: path, half: max / 2, f: f}
	if fi, err := f.Stat(); err == nil {
		l.size = fi.Size()
	}
	return l, nil
}

// OpenFile opens path for appending, creating it and its directory; an
// empty path opens /dev/null.
func OpenFile(path string) (*os.File, error) {
	if path == "" {
		return os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	return os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
}

// Write appends p, rotating the file first when p would take it past
// half the cap; a p longer than half the cap is written in pieces of half
// the cap, so that neither file ever holds more.
func (l *Log) Write(p []byte) (int, error) {
	if l.half <= 0 || l.path == "" {
		n, err := l.f.Write(p)
		l.size += int64(n)
		return n, err
	}
	written := 0
	for len(p) > 0 {
		chunk := p[:min(int64(len(p)), l.half)]
		if l.size > 0 && l.size+int64(len(chunk)) > l.half {
			if err := l.rotate(); err != nil {
				return written, err
			}
		}
		n, err := l.f.Write(chunk)
		l.size += int64(n)
		written += n
		if err != nil {
			return written, err
		}
		p = p[n:]
	}
	return written, nil
}

// rotate moves the file to path.1 and starts a new one.
func (l *Log) rotate() error {
	if err := os.Rename(l.path, l.path+".1"); err != nil {
		return fmt.Errorf("rotating %s: %w", l.path, err)
	}
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("rotating %s: %w", l.path, err)
	}
	_ = l.f.Close()
	l.f, l.size = f, 0
	return nil
}

// Close closes the file.
func (l *Log) Close() error { return l.f.Close() }

// Pipes carries a process's stdout and stderr through pipes into capped
// log files, copied by the process that made them (a shim, which outlives
// agent restarts). The process's children get Stdout and Stderr; the
// maker calls Started once they hold their copies, and Drain once the
// process ended.
type Pipes struct {
	// Stdout and Stderr are the pipes' write ends.
	Stdout, Stderr *os.File
	readers        []*os.File
	wg             sync.WaitGroup
}

// NewPipes opens the capped logs (max bytes each, see Log) and the pipes
// that feed them, and starts copying.
func NewPipes(stdoutPath, stderrPath string, max int64) (_ *Pipes, err error) {
	lp := &Pipes{}
	var logs []*Log
	defer func() {
		if err != nil {
			for _, l := range logs {
				_ = l.Close()
			}
			lp.closeAll()
		}
	}()
	for _, path := range []string{stdoutPath, stderrPath} {
		l, err := Open(path, max)
		if err != nil {
			return nil, fmt.Errorf("opening log %s: %w", path, err)
		}
		logs = append(logs, l)
		r, w, err := os.Pipe()
		if err != nil {
			return nil, fmt.Errorf("creating the log pipe: %w", err)
		}
		lp.readers = append(lp.readers, r)
		if lp.Stdout == nil {
			lp.Stdout = w
		} else {
			lp.Stderr = w
		}
	}
	for i, r := range lp.readers {
		lp.wg.Add(1)
		go func(r *os.File, l *Log) {
			defer lp.wg.Done()
			defer l.Close()
			_, _ = io.Copy(l, r)
		}(r, logs[i])
	}
	return lp, nil
}

// Started closes the maker's copies of the pipes' write ends, once the
// process holds its own, so that the copies end when the process's last
// writer is gone.
func (lp *Pipes) Started() {
	for _, w := range []*os.File{lp.Stdout, lp.Stderr} {
		if w != nil {
			_ = w.Close()
		}
	}
}

// Drain waits until every writer of the pipes is gone and their content
// is in the logs, or timeout passed, and then closes the pipes.
func (lp *Pipes) Drain(timeout time.Duration) {
	done := make(chan struct{})
	go func() { lp.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(timeout):
	}
	lp.closeAll()
	<-done
}

func (lp *Pipes) closeAll() {
	lp.Started()
	for _, r := range lp.readers {
		_ = r.Close()
	}
}
