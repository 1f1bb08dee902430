package runc

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// DefaultMaxLogSize is how many bytes of each of a kernel's output streams
// the driver keeps on disk unless WithMaxLogSize says otherwise.
const DefaultMaxLogSize = 100 << 20

// logDrainTimeout bounds how long the end of a container waits for the
// last of its output to reach the log files.
const logDrainTimeout = 2 * time.Second

// cappedLog is an append-only log file that holds at most max bytes on
// disk together with its one older generation: once the file reaches
// max/2 bytes it is renamed to path.1 (replacing the older one) and a new
// file begins, so that the last max/2 to max bytes of output are kept.
type cappedLog struct {
	path string
	half int64
	f    *os.File
	size int64
}

// openCappedLog opens path for appending (creating it and its directory),
// capped at max bytes; max <= 0 means no cap.
func openCappedLog(path string, max int64) (*cappedLog, error) {
	f, err := openLog(path)
	if err != nil {
		return nil, err
	}
	l := &cappedLog{path: path, half: max / 2, f: f}
	if fi, err := f.Stat(); err == nil {
		l.size = fi.Size()
	}
	return l, nil
}

// Write appends p, rotating the file first when p would take it past
// half the cap.
func (l *cappedLog) Write(p []byte) (int, error) {
	if l.half > 0 && l.path != "" && l.size > 0 && l.size+int64(len(p)) > l.half {
		if err := l.rotate(); err != nil {
			return 0, err
		}
	}
	n, err := l.f.Write(p)
	l.size += int64(n)
	return n, err
}

// rotate moves the file to path.1 and starts a new one.
func (l *cappedLog) rotate() error {
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
func (l *cappedLog) Close() error { return l.f.Close() }

// logPipes carries a container's stdout and stderr through pipes into
// capped log files, copied by the process that launched the container (its
// shim), which outlives agent restarts.
type logPipes struct {
	stdoutW, stderrW *os.File
	readers          []*os.File
	wg               sync.WaitGroup
}

// newLogPipes opens the capped logs and the pipes that feed them.
func newLogPipes(stdoutPath, stderrPath string, max int64) (_ *logPipes, err error) {
	lp := &logPipes{}
	var logs []*cappedLog
	defer func() {
		if err != nil {
			for _, l := range logs {
				_ = l.Close()
			}
			lp.closeAll()
		}
	}()
	for _, path := range []string{stdoutPath, stderrPath} {
		l, err := openCappedLog(path, max)
		if err != nil {
			return nil, fmt.Errorf("opening log %s: %w", path, err)
		}
		logs = append(logs, l)
		r, w, err := os.Pipe()
		if err != nil {
			return nil, fmt.Errorf("creating the log pipe: %w", err)
		}
		lp.readers = append(lp.readers, r)
		if lp.stdoutW == nil {
			lp.stdoutW = w
		} else {
			lp.stderrW = w
		}
	}
	for i, r := range lp.readers {
		lp.wg.Add(1)
		go func(r *os.File, l *cappedLog) {
			defer lp.wg.Done()
			defer l.Close()
			_, _ = io.Copy(l, r)
		}(r, logs[i])
	}
	return lp, nil
}

// started closes the launcher's copies of the pipes' write ends, once the
// container holds its own.
func (lp *logPipes) started() {
	for _, w := range []*os.File{lp.stdoutW, lp.stderrW} {
		if w != nil {
			_ = w.Close()
		}
	}
}

// drain waits until every writer of the pipes is gone and their content
// is in the logs, or timeout passed, and then closes the pipes.
func (lp *logPipes) drain(timeout time.Duration) {
	done := make(chan struct{})
	go func() { lp.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(timeout):
	}
	lp.closeAll()
	<-done
}

func (lp *logPipes) closeAll() {
	lp.started()
	for _, r := range lp.readers {
		_ = r.Close()
	}
}
