package server

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc/status"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/rpc"
	"github.com/corral-dev/corral/structs"
)

// maxExecuteCode bounds the code of one execute request: it goes to the
// kernel as one argument, and Linux takes at most 128 KiB per argument.
const maxExecuteCode = 128<<10 - 1

// runIDRe is what a client-chosen run ID may look like.
var runIDRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// pythonProbe prints the path of the kernel's Python interpreter.
var pythonProbe = []string{"/bin/sh", "-c", "command -v python3 || command -v python"}

// executeSession runs code for a runtime in a kernel (POST
// /v1/sessions/{id}/execute) on top of exec: shell code through /bin/sh -c,
// Python code through the kernel's python3 (or python). The answer is the
// exec's newline-delimited JSON frames, each with the run ID.
func (s *Server) executeSession(w http.ResponseWriter, r *http.Request) {
	fail := func(err error) {
		code, msg := errorStatus(err)
		writeError(w, code, msg)
	}
	ctx, ok := s.streamIdentity(w, r)
	if !ok {
		return
	}
	var req api.ExecuteRequest
	if err := decodeBody(r, &req); err != nil {
		fail(err)
		return
	}
	if req.Runtime == "" {
		req.Runtime = api.RuntimeShell
	}
	switch {
	case req.Runtime != api.RuntimeShell && req.Runtime != api.RuntimePython:
		fail(badRequest("unknown runtime %q: want %s or %s", req.Runtime, api.RuntimeShell, api.RuntimePython))
		return
	case strings.TrimSpace(req.Code) == "":
		fail(badRequest("code is empty: give the %s code to run", req.Runtime))
		return
	case len(req.Code) > maxExecuteCode:
		fail(badRequest("code is %d bytes, more than the %d an execute request takes: copy a file into the kernel and run it instead", len(req.Code), maxExecuteCode))
		return
	case strings.IndexByte(req.Code, 0) >= 0:
		fail(badRequest("code contains a NUL byte"))
		return
	case req.RunID != "" && !runIDRe.MatchString(req.RunID):
		fail(badRequest("invalid run_id %q: want up to 64 letters, digits, '.', '_' or '-', starting with a letter or digit", req.RunID))
		return
	}
	if req.RunID == "" {
		req.RunID = uuid.NewString()
	}
	exec := &api.ExecRequest{Kernel: req.Kernel, Command: []string{"/bin/sh", "-c", req.Code}}
	d, k, c, err := s.execTarget(ctx, r.PathValue("ref"), exec)
	if err != nil {
		fail(err)
		return
	}
	if req.Runtime == api.RuntimePython {
		py, err := probePython(ctx, c, k)
		if err != nil {
			fail(err)
			return
		}
		if py == "" {
			image := k.Image
			if image == "" {
				image = "driver " + k.Driver + ", no image"
			}
			fail(&httpError{code: http.StatusUnprocessableEntity, msg: fmt.Sprintf("runtime python: kernel %s of session %s (%s) has no python3 or python on its PATH: use runtime shell, or an image with Python", k.Hostname, d.Session.ID, image)})
			return
		}
		exec.Command = []string{py, "-c", req.Code}
	}
	env := map[string]string{"CORRAL_RUN_ID": req.RunID}
	for k, v := range req.Env {
		env[k] = v
	}
	stream, err := c.Exec(ctx, &rpc.ExecRequest{KernelID: k.ID, Command: exec.Command, Env: env})
	if err != nil {
		fail(&httpError{code: http.StatusBadGateway, msg: "execute: " + status.Convert(err).Message()})
		return
	}
	ended := relayExec(w, stream, "execute", func(h http.Header) { h.Set(api.RunIDHeader, req.RunID) }, func(f *rpc.ExecFrame) any {
		return api.ExecuteFrame{RunID: req.RunID, ExecFrame: api.ExecFrame{Stream: f.Stream, Data: f.Data, ExitCode: f.ExitCode, Error: f.Error}}
	})
	if ended {
		s.activity.touch(d.Session.ID, time.Now().UTC())
	}
}

// probePython finds the kernel's Python interpreter: python3, else
// python, on its PATH ("" when neither is there).
func probePython(ctx context.Context, c *rpc.AgentClient, k *structs.Kernel) (string, error) {
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	stream, err := c.Exec(pctx, &rpc.ExecRequest{KernelID: k.ID, Command: pythonProbe})
	if err != nil {
		return "", &httpError{code: http.StatusBadGateway, msg: "execute: looking for python in the kernel: " + status.Convert(err).Message()}
	}
	var out bytes.Buffer
	for {
		f, err := stream.Recv()
		if err != nil {
			return "", &httpError{code: http.StatusBadGateway, msg: "execute: looking for python in the kernel: " + status.Convert(err).Message()}
		}
		if f.Stream == "stdout" && out.Len() < 4096 {
			out.Write(f.Data)
		}
		if f.Error != "" {
			return "", &httpError{code: http.StatusBadGateway, msg: "execute: looking for python in the kernel: " + f.Error}
		}
		if f.ExitCode != nil {
			if *f.ExitCode != 0 {
				return "", nil
			}
			line, _, _ := strings.Cut(strings.TrimSpace(out.String()), "\n")
			return strings.TrimSpace(line), nil
		}
	}
}
