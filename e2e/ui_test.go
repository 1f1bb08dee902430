package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	cdplog "github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/corral-dev/corral/structs"
)

// findChromium returns a headless-capable Chromium on this machine,
// installing Debian's package when it is missing and we may (root, apt).
func findChromium(t *testing.T) string {
	t.Helper()
	names := []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"}
	look := func() string {
		for _, n := range names {
			if p, err := exec.LookPath(n); err == nil {
				return p
			}
		}
		return ""
	}
	if p := look(); p != "" {
		return p
	}
	if _, err := exec.LookPath("apt-get"); err == nil && os.Geteuid() == 0 {
		cmd := exec.Command("apt-get", "install", "-y", "-qq", "chromium")
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Logf("apt-get install chromium: %v\n%s", err, out)
		}
	}
	return look()
}

// browserLog collects what a page reports that a user would call broken:
// console errors, uncaught exceptions and error log entries (failed
// requests among them), and counts the bytes its requests transferred.
type browserLog struct {
	mu       sync.Mutex
	problems []string
	bytes    map[network.RequestID]float64
}

func (b *browserLog) listen(ev any) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch ev := ev.(type) {
	case *runtime.EventConsoleAPICalled:
		if ev.Type == runtime.ConsoleAPICalledTypeError || ev.Type == runtime.ConsoleAPICalledTypeAssert {
			var args []string
			for _, a := range ev.Args {
				args = append(args, string(a.Value)+a.Description)
			}
			b.problems = append(b.problems, fmt.Sprintf("console.%s: %s", ev.Type, strings.Join(args, " ")))
		}
	case *runtime.EventExceptionThrown:
		msg := ev.ExceptionDetails.Text
		if ev.ExceptionDetails.Exception != nil {
			msg += " " + ev.ExceptionDetails.Exception.Description
		}
		b.problems = append(b.problems, fmt.Sprintf("exception at %s:%d: %s", ev.ExceptionDetails.URL, ev.ExceptionDetails.LineNumber, msg))
	case *cdplog.EventEntryAdded:
		if ev.Entry.Level == cdplog.EntryLevelError {
			b.problems = append(b.problems, fmt.Sprintf("log %s: %s %s", ev.Entry.Source, ev.Entry.Text, ev.Entry.URL))
		}
	case *network.EventLoadingFinished:
		if b.bytes != nil {
			b.bytes[ev.RequestID] = ev.EncodedDataLength
		}
	}
}

// takeProblems returns and forgets what was collected.
func (b *browserLog) takeProblems() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	p := b.problems
	b.problems = nil
	return p
}

// countBytes starts (or stops, returning the sum of) the count of bytes
// of finished requests.
func (b *browserLog) countBytes(on bool) (float64, int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	var sum float64
	n := len(b.bytes)
	for _, v := range b.bytes {
		sum += v
	}
	if on {
		b.bytes = map[network.RequestID]float64{}
	} else {
		b.bytes = nil
	}
	return sum, n
}

// TestUIDashboard drives the web dashboard of `corral dev` in headless
// Chromium: log in with the admin token, visit every page without console
// errors, create a session through the form and watch it run and its logs
// appear (live, from the event stream), use the terminal, drain a node and
// destroy a session. Screenshots go to $CORRAL_UI_ARTIFACTS (or a temp dir).
func TestUIDashboard(t *testing.T) {
	browser := findChromium(t)
	if browser == "" {
		t.Skip("no Chromium on this machine and it could not be installed (apt-get install chromium)")
	}
	artifacts := os.Getenv("CORRAL_UI_ARTIFACTS")
	if artifacts == "" {
		artifacts = t.TempDir()
	}
	if err := os.MkdirAll(artifacts, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshots in %s", artifacts)

	// corral dev: a server and an agent in one process.
	t.Setenv("HOME", t.TempDir()) // dev writes ~/.corral/token
	dataDir := t.TempDir()
	reapKernels(t, filepath.Join(dataDir, "agent"))
	httpAddr := freePort(t)
	start(t, "dev", "dev", "-data-dir", dataDir, "-http", httpAddr, "-rpc", freePort(t), "-serf", freePort(t), "-agent-serf", freePort(t))
	base := "http://" + httpAddr
	var token string
	eventually(t, 60*time.Second, "corral dev writes the admin token", func() error {
		tok, ok := adminTokenIn(filepath.Join(dataDir, "server"))
		if !ok {
			return fmt.Errorf("no admin token file yet")
		}
		token = tok
		apiTokens.Store(base, tok)
		return nil
	})
	eventually(t, 60*time.Second, "the agent of corral dev is ALIVE", func() error {
		r := cli(t, base, "node", "list", "-json")
		var agents []*structs.Agent
		if err := json.Unmarshal([]byte(r.stdout), &agents); err != nil {
			return fmt.Errorf("%v: %s%s", err, r.stdout, r.stderr)
		}
		if len(agents) != 1 || agents[0].Status != structs.AgentAlive {
			return fmt.Errorf("agents: %s", r.stdout)
		}
		return nil
	})

	// The assets come without a token, with a strict policy.
	resp, err := http.Get(base + "/ui/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(resp.Header.Get("Content-Security-Policy"), "frame-ancestors 'none'") ||
		resp.Header.Get("X-Content-Type-Options") != "nosniff" {
		t.Fatalf("GET /ui/: %s, headers %v", resp.Status, resp.Header)
	}

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(browser), chromedp.NoSandbox,
		chromedp.Headless, chromedp.DisableGPU, chromedp.WindowSize(1400, 1000), chromedp.Flag("disable-dev-shm-usage", true))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	bl := &browserLog{}
	ctx, cancelCtx := chromedp.NewContext(actx, chromedp.WithListener(bl.listen))
	defer cancelCtx()
	// Every step has a generous deadline; the whole run is bounded too.
	ctx, cancelRun := context.WithTimeout(ctx, 5*time.Minute)
	defer cancelRun()
	must := func(what string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, actions...); err != nil {
			shot(t, ctx, artifacts, "failed")
			t.Fatalf("%s: %v", what, err)
		}
	}
	// waitJS polls a JavaScript condition until it is true.
	waitJS := func(what, expr string) {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for {
			ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](expr))
			if err == nil && ok {
				return
			}
			if time.Now().After(deadline) {
				shot(t, ctx, artifacts, "failed")
				text, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.querySelector('main').innerText`))
				t.Fatalf("%s: not within 60s (err %v); page:\n%s", what, err, text)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	clean := func(where string) {
		t.Helper()
		if p := bl.takeProblems(); len(p) > 0 {
			shot(t, ctx, artifacts, "problems-"+where)
			t.Fatalf("%s: the page reported:\n%s", where, strings.Join(p, "\n"))
		}
	}

	must("open the login page", chromedp.Navigate(base+"/ui/"), chromedp.WaitVisible(chromedp.CSS("#login-form")))
	shot(t, ctx, artifacts, "login")
	clean("login page")
	must("log in", chromedp.SendKeys(chromedp.CSS("#token"), token), chromedp.Click(chromedp.CSS(`#login-form button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#nodes table tr[data-agent]`)))
	waitJS("the event stream is live", `document.querySelector('#live').textContent === 'live'`)

	// First load: a cold cache, the token already in the tab's storage.
	cache := func(disabled bool) {
		t.Helper()
		if _, err := chromedp.Call(ctx, network.SetCacheDisabled, network.SetCacheDisabledParams{CacheDisabled: disabled}); err != nil {
			t.Fatalf("Network.setCacheDisabled: %v", err)
		}
	}
	cache(true)
	bl.countBytes(true)
	t0 := time.Now()
	must("reload the dashboard", chromedp.Reload(), chromedp.WaitVisible(chromedp.CSS(`#nodes table tr[data-agent]`)))
	firstLoad := time.Since(t0)
	time.Sleep(200 * time.Millisecond) // let the last loadingFinished events land
	loadBytes, requests := bl.countBytes(false)
	t.Logf("FIGURE ui first load: %.0f ms from navigation to the nodes table rendered (cold cache, headless Chromium, corral dev)", float64(firstLoad.Microseconds())/1000)
	t.Logf("FIGURE ui first load: %.0f bytes transferred in %d finished requests (encoded, headers included; the open event stream not counted)", loadBytes, requests)
	cache(false)
	waitJS("the event stream is live again", `document.querySelector('#live').textContent === 'live'`)
	shot(t, ctx, artifacts, "nodes")
	clean("nodes page")

	pages := []struct{ page, ready string }{
		{"sessions", `document.querySelector('#sessions') !== null`},
		{"new", `document.querySelector('#new-session') !== null`},
		{"queue", `(document.querySelector('#queue')||{}).textContent !== 'Loading…'`},
		{"endpoints", `(document.querySelector('#endpoints')||{}).textContent !== 'Loading…'`},
		{"admin", `document.querySelectorAll('#keys tr[data-key]').length > 0 && document.querySelectorAll('#users td').length > 0`},
		{"nodes", `document.querySelector('#nodes tr[data-agent]') !== null`},
	}
	for _, p := range pages {
		must("open page "+p.page, chromedp.Click(chromedp.CSS(`#nav a[data-page="`+p.page+`"]`)))
		waitJS("page "+p.page+" renders", `document.body.dataset.page === '`+p.page+`' && `+p.ready)
		shot(t, ctx, artifacts, p.page)
		clean("page " + p.page)
	}

	// The queue follows the events: a session no agent can fit shows up
	// in its group with the reason, and leaves when it is destroyed.
	must("open the queue", chromedp.Click(chromedp.CSS(`#nav a[data-page="queue"]`)))
	waitJS("the queue is empty", `document.body.dataset.page === 'queue' && document.querySelector('#queue').textContent === 'Nothing is pending.'`)
	mustCLI(t, base, 0, "session", "create", "-name", "ui-toobig", "-cpu", "64", "--", "true")
	waitJS("the pending session shows in the queue with its reason", `[...document.querySelectorAll('#queue section[data-group="default"] tr')].some(r => r.textContent.includes('ui-toobig') && r.lastChild.textContent.length > 0)`)
	shot(t, ctx, artifacts, "queue-pending")
	mustCLI(t, base, 0, "session", "destroy", "ui-toobig")
	waitJS("the destroyed session leaves the queue", `document.querySelector('#queue').textContent === 'Nothing is pending.'`)
	clean("queue")

	// An endpoint shows with its replicas as they start (the endpoints
	// page reads the list again on replica session events).
	must("open the endpoints", chromedp.Click(chromedp.CSS(`#nav a[data-page="endpoints"]`)))
	waitJS("the endpoints page shows none", `document.body.dataset.page === 'endpoints' && document.querySelector('#endpoints').textContent.startsWith('No endpoints')`)
	_, port, _ := strings.Cut(freePort(t), ":")
	mustCLI(t, base, 0, "endpoint", "create", "ui-ep", "-driver", "exec", "-port", port, "-replicas", "1", "-cpu", "0.1", "-mem", "64M", "--", "sleep", "600")
	waitJS("the endpoint shows with its replica", `[...document.querySelectorAll('#endpoints [data-endpoint="ui-ep"] tbody tr')].length === 1 && document.querySelector('#endpoints [data-endpoint="ui-ep"]').textContent.includes('req/s')`)
	shot(t, ctx, artifacts, "endpoints-replica")
	mustCLI(t, base, 0, "endpoint", "delete", "ui-ep")
	waitJS("the deleted endpoint leaves the page", `document.querySelector('#endpoints [data-endpoint="ui-ep"]') === null`)
	clean("endpoints")

	// A batch session created through the form runs; its status and its
	// logs arrive on the open page (the page is never reloaded).
	must("open the create form", chromedp.Click(chromedp.CSS(`#nav a[data-page="new"]`)), chromedp.WaitVisible(chromedp.CSS("#new-session")))
	must("fill in the form", chromedp.SetValue(chromedp.CSS("#new-name"), "ui-batch"),
		chromedp.SetValue(chromedp.CSS("#new-command"), `sh -c 'echo hello-ui; sleep 1'`), chromedp.SetValue(chromedp.CSS("#new-mem"), "128M"),
		chromedp.Click(chromedp.CSS("#new-submit")))
	waitJS("the session page opens", `location.hash.startsWith('#/session/') && document.body.dataset.page === 'session'`)
	waitJS("the session ends TERMINATED with SUCCESS", `(document.querySelector('#session-status')||{}).textContent === 'TERMINATED SUCCESS'`)
	waitJS("its logs appear", `(document.querySelector('#logs')||{}).textContent.includes('hello-ui')`)
	waitJS("its history shows it ran", `[...document.querySelectorAll('#history td .status')].some(e => e.textContent === 'RUNNING')`)
	shot(t, ctx, artifacts, "session-batch")
	clean("session page")
	loc, err := chromedp.Run(ctx, chromedp.Evaluate[string](`location.hash`))
	if err != nil {
		t.Fatal(err)
	}
	id := strings.TrimPrefix(loc, "#/session/")
	if s := sessionsJSON(t, base)[id]; s == nil || s.Name != "ui-batch" || s.Result != structs.ResultSuccess {
		t.Fatalf("the API says of session %s: %+v", id, s)
	}

	// The event stream resumes from the last index it applied: while the
	// stream is cut a session runs to its end; once it may reconnect, the
	// page shows it without a reload.
	must("open the sessions page", chromedp.Click(chromedp.CSS(`#nav a[data-page="sessions"]`)))
	waitJS("the sessions page shows", `document.body.dataset.page === 'sessions' && document.querySelector('#sessions') !== null`)
	// The browser blocks the event stream's URL (DevTools), so that the
	// page cannot reconnect until it is unblocked.
	offline := func(off bool) {
		t.Helper()
		params := network.SetBlockedURLsParams{URLPatterns: []*network.BlockPattern{}}
		if off {
			params.URLPatterns = append(params.URLPatterns, &network.BlockPattern{URLPattern: base + "/v1/events?*", Block: true})
		}
		if _, err := chromedp.Call(ctx, network.SetBlockedURLs, params); err != nil {
			t.Fatalf("Network.setBlockedURLs: %v", err)
		}
	}
	offline(true)
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`S.abort.abort(), true`)); err != nil {
		t.Fatal(err)
	}
	waitJS("the page knows it is offline", `document.querySelector('#live').textContent === 'offline'`)
	mustCLI(t, base, 0, "session", "create", "-name", "ui-offline", "-wait", "--", "true")
	if seen, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`document.querySelector('#sessions').textContent.includes('ui-offline')`)); err != nil || seen {
		t.Fatalf("the offline page shows a session created while it was offline (%v): it never was offline", err)
	}
	offline(false)
	waitJS("back online, the session created meanwhile shows TERMINATED", `document.querySelector('#live').textContent === 'live' && [...document.querySelectorAll('#sessions tr')].some(r => r.textContent.includes('ui-offline') && r.textContent.includes('TERMINATED'))`)
	for _, p := range bl.takeProblems() {
		if !strings.Contains(p, "ERR_BLOCKED_BY_CLIENT") {
			t.Errorf("while its stream was cut, the page reported: %s", p)
		}
	}

	// The terminal: an interactive session, a shell over the exec
	// WebSocket (the token travels as a subprotocol).
	mustCLI(t, base, 0, "session", "create", "-type", "interactive", "-name", "ui-shell", "-wait", "--", "sleep", "600")
	must("open the sessions page", chromedp.Click(chromedp.CSS(`#nav a[data-page="sessions"]`)))
	waitJS("the interactive session is listed RUNNING", `[...document.querySelectorAll('#sessions tr')].some(r => r.textContent.includes('ui-shell') && r.textContent.includes('RUNNING'))`)
	must("filter the sessions by status", chromedp.SetValue(chromedp.CSS("#f-status"), "RUNNING"), chromedp.SendKeys(chromedp.CSS("#f-user"), "admin"))
	waitJS("the filter keeps only the running session", `document.querySelectorAll('#sessions tr[data-session]').length === 1`)
	shot(t, ctx, artifacts, "sessions-filtered")
	must("open the interactive session", chromedp.Click(chromedp.CSS(`#sessions tr[data-session] a`)))
	waitJS("its kernel is listed", `document.querySelectorAll('#kernels tr[data-kernel]').length === 1 && document.querySelectorAll('#term-kernel option').length === 1`)
	must("open a terminal", chromedp.Click(chromedp.CSS("#term-open")))
	waitJS("the terminal is open", `!document.querySelector('#term-input').disabled`)
	must("type a command", chromedp.SendKeys(chromedp.CSS("#term-input"), "echo term-$((6*7))\r"))
	waitJS("the command's output shows", `document.querySelector('#term-out').textContent.includes('term-42')`)
	shot(t, ctx, artifacts, "terminal")
	clean("terminal")

	// Admin actions: destroy the interactive session (two clicks), drain
	// the node and make it eligible again.
	must("destroy the session", chromedp.Click(chromedp.CSS(`#session-info button.danger`)), chromedp.Click(chromedp.CSS(`#session-info button.danger`)))
	waitJS("the session is destroyed", `['TERMINATED','CANCELLED'].some(s => (document.querySelector('#session-status')||{}).textContent.startsWith(s))`)
	waitJS("the terminal closed with the kernel", `document.querySelector('#term-input').disabled`)
	must("open the nodes page", chromedp.Click(chromedp.CSS(`#nav a[data-page="nodes"]`)), chromedp.WaitVisible(chromedp.CSS(`#nodes button[data-action="drain"]`)))
	must("drain the node", chromedp.Click(chromedp.CSS(`#nodes button[data-action="drain"]`)))
	waitJS("the node shows as draining", `document.querySelector('#nodes .status.drain') !== null && document.querySelector('#nodes button[data-action="eligible"]') !== null`)
	shot(t, ctx, artifacts, "nodes-drained")
	must("make the node eligible", chromedp.Click(chromedp.CSS(`#nodes button[data-action="eligible"]`)))
	waitJS("the node is eligible again", `document.querySelector('#nodes .status.drain') === null`)
	clean("admin actions")
	// Keys from the admin page: a user and a key for it, then the user
	// logs in and sees no admin page and none of the admin's sessions.
	must("open the admin page", chromedp.Click(chromedp.CSS(`#nav a[data-page="admin"]`)), chromedp.WaitVisible(chromedp.CSS(`#user-form`)))
	must("create a user", chromedp.SendKeys(chromedp.CSS(`#user-name`), "bob"), chromedp.Click(chromedp.CSS(`#user-form button[type="submit"]`)))
	waitJS("the user is listed", `[...document.querySelectorAll('#users td')].some(td => td.textContent === 'bob')`)
	must("create a key", chromedp.SendKeys(chromedp.CSS(`#key-user`), "bob"), chromedp.Click(chromedp.CSS(`#key-form button[type="submit"]`)))
	waitJS("the key's token is shown once", `document.querySelector('#new-token .secret') !== null`)
	bobToken, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.querySelector('#new-token .secret').textContent`))
	if err != nil || !strings.HasPrefix(bobToken, "AK") {
		t.Fatalf("the new key's token: %q (%v)", bobToken, err)
	}
	clean("admin keys")
	must("log out", chromedp.Click(chromedp.CSS(`#logout`)), chromedp.WaitVisible(chromedp.CSS(`#login-form`)))
	must("log in as bob", chromedp.SendKeys(chromedp.CSS(`#token`), bobToken), chromedp.Click(chromedp.CSS(`#login-form button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#nodes table tr[data-agent]`)))
	waitJS("bob has no admin page and no drain button", `document.querySelector('#who').textContent === 'bob' && document.querySelector('#nav-admin').hidden && document.querySelector('#nodes button') === null`)
	must("open bob's sessions", chromedp.Click(chromedp.CSS(`#nav a[data-page="sessions"]`)))
	waitJS("bob sees none of the admin's sessions", `document.body.dataset.page === 'sessions' && document.querySelector('#sessions').textContent === 'No sessions match.'`)
	shot(t, ctx, artifacts, "user-sessions")
	clean("user pages")

	r := mustCLI(t, base, 0, "node", "list", "-json")
	var agents []*structs.Agent
	if err := json.Unmarshal([]byte(r.stdout), &agents); err != nil || len(agents) != 1 || agents[0].Drain {
		t.Fatalf("after drain and eligible from the UI the API says: %s (%v)", r.stdout, err)
	}
}

// shot saves a screenshot of the page as dir/name.png.
func shot(t *testing.T, ctx context.Context, dir, name string) {
	t.Helper()
	buf, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		t.Logf("screenshot %s: %v", name, err)
		return
	}
	name = strings.NewReplacer(" ", "-", "/", "-").Replace(name)
	if err := os.WriteFile(filepath.Join(dir, name+".png"), buf, 0o644); err != nil {
		t.Logf("screenshot %s: %v", name, err)
	}
}
