package state

import (
	"fmt"
	"strings"
	"time"

	"github.com/corral-dev/corral/structs"
)

// Whole-job semantics of cluster sessions: which kernel's end decides the
// session, and the status line that names it.
//
//   - A kernel that fails to start (ERROR before it ever ran) fails any
//     cluster session: its peers would wait at the start barrier forever.
//   - With fail_on "any", the first kernel that ends on its own with a
//     non-zero exit code or in ERROR ends the session (FAILURE for batch)
//     and stops the others.
//   - With fail_on "main" only main1's end decides; a sub that ends leaves
//     the others running.
//   - main1's own end stops the others (stopAfterMain); they are not
//     failures, and their stop reports never replace the status line.
//
// A kernel ends "on its own" when the server was not stopping it: a
// kernel that was TERMINATING (destroy, main1's end, another's failure)
// counts for nothing.

// kernelEnd is how one kernel ended on its own.
type kernelEnd struct {
	failed      bool // a non-zero exit or ERROR
	startFailed bool // ERROR before the kernel ever ran
	text        string
}

// preRunning are the statuses of a kernel that has not run yet.
var preRunning = map[structs.KernelStatus]bool{
	structs.KernelScheduled: true, structs.KernelPreparing: true,
	structs.KernelPulling: true, structs.KernelCreating: true,
}

// ownEnd reports how a kernel that moved from before to after ended on its
// own, or nil when it did not end, or ended because the server stopped it.
func ownEnd(before, after *structs.Kernel) *kernelEnd {
	if !after.Status.Terminal() || after.Status == structs.KernelCancelled ||
		before.Status == structs.KernelTerminating || before.Status.Terminal() {
		return nil
	}
	e := &kernelEnd{
		failed:      after.Status == structs.KernelError || (after.ExitCode != nil && *after.ExitCode != 0),
		startFailed: after.Status == structs.KernelError && preRunning[before.Status],
	}
	e.text = describeEnd(after, e.startFailed)
	return e
}

// describeEnd is the status line of a kernel's own end: "sub2 exited with
// code 3", "main1 ended: exited with code 0", "sub1 failed to start: ...".
func describeEnd(k *structs.Kernel, startFailed bool) string {
	info := k.StatusInfo
	switch {
	case startFailed:
		return fmt.Sprintf("%s failed to start: %s", k.Hostname, orText(info, "ERROR"))
	case k.Status == structs.KernelError:
		return fmt.Sprintf("%s failed: %s", k.Hostname, orText(info, "ERROR"))
	case k.ExitCode != nil && *k.ExitCode != 0:
		if strings.HasPrefix(info, "exited with code") {
			return k.Hostname + " " + info
		}
		return fmt.Sprintf("%s ended: %s (exit code %d)", k.Hostname, orText(info, "terminated"), *k.ExitCode)
	case info == "" && k.ExitCode != nil:
		return fmt.Sprintf("%s ended: exited with code %d", k.Hostname, *k.ExitCode)
	}
	return fmt.Sprintf("%s ended: %s", k.Hostname, orText(info, "terminated"))
}

func orText(s, alt string) string {
	if s == "" {
		return alt
	}
	return s
}

// isMain1 reports whether k is its session's main kernel.
func isMain1(k *structs.Kernel) bool { return k.Role == "main" && k.Idx == 1 }

// everRan reports whether a kernel was RUNNING at some point.
func everRan(k *structs.Kernel) bool {
	for _, h := range k.History {
		if h.Status == string(structs.KernelRunning) {
			return true
		}
	}
	return false
}

// judgeEnds applies the whole-job rules to a cluster session after some of
// its kernels ended on their own (ends, by kernel ID): a decisive failure
// ends the session and stops the others; main1's own end becomes the
// session's end reason (stopAfterMain stops the others).
func (w *writer) judgeEnds(id string, ends map[string]*kernelEnd, now time.Time) error {
	if len(ends) == 0 || strings.Contains(id, supersededMark) {
		return nil
	}
	sn := w.snap()
	sess, err := sn.Session(nil, id)
	if err != nil || sess.Status.Terminal() {
		return err
	}
	kernels, err := sn.kernelsOf(nil, sess)
	if err != nil || len(kernels) < 2 {
		return err
	}
	var fail, mainEnd *kernelEnd
	for _, k := range kernels { // main1 first, then sub1, sub2...
		e := ends[k.ID]
		if e == nil {
			continue
		}
		if fail == nil && (e.startFailed || (e.failed && sess.FailOn == structs.FailOnAny)) {
			fail = e
		}
		if isMain1(k) {
			mainEnd = e
		}
	}
	switch {
	case fail != nil:
		c := sess.Copy()
		if c.EndReason == "" {
			c.EndReason = fail.text
		}
		if c.Type == structs.SessionTypeBatch && c.Result == structs.ResultUndefined {
			c.Result = structs.ResultFailure
		}
		if err := w.putSession(c); err != nil {
			return err
		}
		return w.stopKernels(w.snap(), kernels, nil, "stopped: "+fail.text, now)
	case mainEnd != nil && sess.EndReason == "":
		c := sess.Copy()
		c.EndReason = mainEnd.text
		return w.putSession(c)
	}
	return nil
}
