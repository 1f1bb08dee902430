package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/structs"
)

// logsPoll is how often `session logs -f` asks for new output.
const logsPoll = 500 * time.Millisecond

// logFrame is one line of `session logs -json`: a piece of one stream.
type logFrame struct {
	Kernel string `json:"kernel"`
	Stream string `json:"stream"` // "stdout" or "stderr"
	Data   []byte `json:"data"`   // base64 in JSON: bytes stay bytes
}

func (c *cli) sessionLogs(ctx context.Context, args []string) error {
	f := c.newFlags("session logs", "REF [flags]",
		"Print a kernel's stdout to stdout and its stderr to stderr; -f follows them until the session ends.", false)
	kernel := f.String("kernel", "main1", "kernel hostname or ID")
	follow := f.Bool("f", false, "follow the output until the session ends (waits for a starting session)")
	tailN := f.Int("tail", -1, "print only the last N lines of each stream first (-1: all the agent keeps)")
	onlyErr := f.Bool("stderr", false, "print only the kernel's stderr, to stdout")
	asJSON := f.Bool("json", false, `print newline-delimited JSON: {"kernel": ..., "stream": "stdout"|"stderr", "data": BASE64}`)
	ref, client, err := f.refClient(args, "session ID, ID prefix or name")
	if err != nil {
		return err
	}
	var d *api.SessionDetail
	if *follow {
		if d, err = client.GetSession(ctx, ref); err != nil {
			return err
		}
		ref = d.Session.ID
		if starting(d.Session.Status) {
			if d, err = followSession(ctx, client, d, func(s *structs.Session) bool { return !starting(s.Status) }, nil); err != nil {
				return err
			}
		}
	}
	logs, err := client.SessionLogs(ctx, ref, *kernel)
	if err != nil {
		return err
	}
	out, errOut := logs.StdoutData(), logs.StderrData()
	if *tailN >= 0 {
		out, errOut = lastLines(out, *tailN), lastLines(errOut, *tailN)
	}
	write := func(stream string, b []byte) error {
		if len(b) == 0 || (*onlyErr && stream == "stdout") {
			return nil
		}
		if *asJSON {
			return json.NewEncoder(c.stdout).Encode(logFrame{Kernel: logs.Hostname, Stream: stream, Data: b})
		}
		w := c.stdout
		if stream == "stderr" && !*onlyErr {
			w = c.stderr
		}
		_, err := w.Write(b)
		return err
	}
	if err := write("stdout", out); err != nil {
		return err
	}
	if err := write("stderr", errOut); err != nil {
		return err
	}
	if !*follow {
		return nil
	}
	outEnd, errEnd := logs.StdoutEnd, logs.StderrEnd
	if (outEnd == 0 && len(logs.StdoutBytes) > 0) || (errEnd == 0 && len(logs.StderrBytes) > 0) {
		return fmt.Errorf("cannot follow kernel %s: its agent (or the server) predates log offsets: upgrade it, or read the logs without -f", logs.Hostname)
	}
	for {
		if d, err = client.GetSession(ctx, ref); err != nil {
			return err
		}
		// Once the session has ended, one more read gets what its
		// kernel wrote last.
		ended := d.Session.Status.Terminal()
		if !ended {
			select {
			case <-ctx.Done():
				return nil // ^C ends following, not the session
			case <-time.After(logsPoll):
			}
		}
		next, err := client.SessionLogsFrom(ctx, ref, *kernel, outEnd, errEnd)
		if err != nil {
			return err
		}
		if err := write("stdout", next.StdoutData()); err != nil {
			return err
		}
		if err := write("stderr", next.StderrData()); err != nil {
			return err
		}
		outEnd, errEnd = next.StdoutEnd, next.StderrEnd
		if ended {
			return nil
		}
	}
}

// lastLines returns the last n lines of b (a last line without a newline
// counts).
func lastLines(b []byte, n int) []byte {
	if n == 0 {
		return nil
	}
	end := len(b)
	if end > 0 && b[end-1] == '\n' {
		end--
	}
	for i := 0; i < n; i++ {
		j := bytes.LastIndexByte(b[:end], '\n')
		if j < 0 {
			return b
		}
		if i == n-1 {
			return b[j+1:]
		}
		end = j
	}
	return b
}
