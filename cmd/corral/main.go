// Command corral is the server, the agent and the CLI of corral: one binary
// for every role. The CLI commands are thin clients of the HTTP API.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/rpc/tlsutil"
	buildversion "github.com/corral-dev/corral/version"
)

// version is the build's, set with -ldflags in the version package.
var version = buildversion.Version

func main() {
	runcInitIfRequested()
	runShimIfRequested()
	os.Exit(run(os.Args[1:]))
}

// run dispatches the daemon roles, which own the process, and hands every
// other command to the CLI.
func run(args []string) int {
	if len(args) > 0 {
		switch args[0] {
		case "dev":
			return runDev(args[1:])
		case "server":
			if len(args) > 1 && args[1] == "members" {
				break // a client command: corral server members
			}
			return runServer(args[1:])
		case "agent":
			return runAgent(args[1:])
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	c := &cli{stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv}
	return c.run(ctx, args)
}

// cli runs the client commands; its fields let tests capture the output.
type cli struct {
	stdout, stderr io.Writer
	getenv         func(string) string
	stdin          io.Reader // nil: os.Stdin
	// pull is the pull progress printProgress showed last, and when.
	pull struct {
		info string
		at   time.Time
	}
}

// command is one subcommand of a command group (session, node).
type command struct {
	name, synopsis, summary string
	run                     func(c *cli, ctx context.Context, args []string) error
}

var sessionCommands = []command{
	{"create", "[flags] -- CMD [ARGS...]", "submit a session that runs CMD", (*cli).sessionCreate},
	{"list", "[flags]", "list sessions, oldest first", (*cli).sessionList},
	{"status", "REF [flags]", "show a session, its kernels and the history of their statuses", (*cli).sessionStatus},
	{"logs", "REF [flags]", "print the stdout and stderr of a kernel", (*cli).sessionLogs},
	{"exec", "REF [flags] -- CMD [ARGS...]", "run a command in a running session", (*cli).sessionExec},
	{"app", "REF [NAME] [flags]", "list a session's apps, or open a local port tunnelled to one", (*cli).sessionApp},
	{"run", "REF [-runtime python] -- CODE|-", "run shell or Python code in a running session, print its output, exit with its status", (*cli).sessionRun},
	{"wait", "REF [-timeout D] [-until running|ended]", "wait for a session to end (or run), exit non-zero when it failed or the timeout expired", (*cli).sessionWait},
	{"destroy", "REF [flags]", "cancel a pending session or terminate a running one", (*cli).sessionDestroy},
}

var nodeCommands = []command{
	{"list", "[flags]", "list agents with their status and resources", (*cli).nodeList},
	{"status", "ID [flags]", "show one agent and each of its resource slots", (*cli).nodeStatus},
	{"drain", "ID [-force] [flags]", "stop new placements on an agent (-force also terminates its kernels)", (*cli).nodeDrain},
	{"eligible", "ID [flags]", "let an agent take new placements again", (*cli).nodeEligible},
	{"revoke", "NODE [flags]", "revoke a node's certificates: the servers cut it off at once (admin)", (*cli).nodeRevoke},
	{"leave", "ID [flags]", "give a node up now: its kernels end, batch sessions with retries re-queue (stop the agent after)", (*cli).nodeLeave},
}

func (c *cli) usage(w io.Writer) {
	fmt.Fprint(w, `Usage: corral <command> [subcommand] [flags]

corral runs compute sessions on GPU clusters.

Daemons:
  dev                 a server and an agent in one process, to try corral
  server              a server: HTTP API, raft state store, scheduler
  agent               an agent: joins the cluster and runs kernels on this node

`)
	for _, g := range []struct {
		title, name string
		cmds        []command
	}{{"Sessions", "session", sessionCommands}, {"Templates", "template", templateCommands}, {"Endpoints", "endpoint", endpointCommands}, {"Volumes", "volume", volumeCommands}, {"Nodes", "node", nodeCommands}, {"Images", "image", imageCommands},
		{"Users", "user", userCommands}, {"Access keys", "key", keyCommands}, {"Policies", "policy", policyCommands},
		{"Resource groups", "group", groupCommands}, {"Security", "tls", tlsCommands}, {"System", "system", systemCommands},
		{"Operator", "", clusterOpCommands()}} {
		fmt.Fprintf(w, "%s:\n", g.title)
		for _, sc := range g.cmds {
			fmt.Fprintf(w, "  %-18s  %s\n", strings.TrimSpace(g.name+" "+sc.name), sc.summary)
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, `Other:
  run                 submit the sessions of a job file (-dry-run: show where they would go)
  queue               list pending sessions in the order the scheduler takes them, with why they wait
  events              follow changes to sessions, kernels, nodes and endpoints as they happen
  keygen              print a new gossip encryption key for -encrypt
  bench               measure throughput and latency of a running corral
  version             print the version
  help                print this help

A session REF is its ID, a unique ID prefix or its name. Client commands
talk to the HTTP API at -address (default $CORRAL_ADDR, else %s)
with -token (default $CORRAL_TOKEN, else ~/.corral/token); both (and
-ca-cert) may also come before the command: corral -token T node list.
Run 'corral <command> [subcommand] -h' for the flags of a command.
`, api.DefaultAddress)
}

// globalFlags maps the flags every client command takes, given before the
// command (corral -token T node list), to the environment variable each
// one's default comes from.
var globalFlags = map[string]string{"token": "CORRAL_TOKEN", "address": "CORRAL_ADDR", "ca-cert": "CORRAL_CACERT"}

// takeGlobalFlags reads -token, -address and -ca-cert given before the
// command ("-token T" or "-token=T") into c's environment, where every
// command's flags take their defaults; a flag after the command still wins.
func (c *cli) takeGlobalFlags(args []string) ([]string, error) {
	set := map[string]string{}
	for len(args) > 0 && strings.HasPrefix(args[0], "-") {
		name, val, hasVal := strings.Cut(strings.TrimLeft(args[0], "-"), "=")
		env, ok := globalFlags[name]
		if !ok {
			break
		}
		if !hasVal {
			if len(args) < 2 {
				return nil, &usageError{cmd: "corral", msg: "flag -" + name + " needs a value"}
			}
			val, args = args[1], args[1:]
		}
		set[env] = val
		args = args[1:]
	}
	if len(set) > 0 {
		getenv := c.getenv
		c.getenv = func(k string) string {
			if v, ok := set[k]; ok {
				return v
			}
			return getenv(k)
		}
	}
	return args, nil
}

// run runs one client command and returns the process exit code.
func (c *cli) run(ctx context.Context, args []string) int {
	args, err := c.takeGlobalFlags(args)
	if err != nil {
		return c.exit(ctx, err)
	}
	if len(args) == 0 {
		c.usage(c.stderr)
		return 2
	}
	switch args[0] {
	case "help", "-h", "-help", "--help":
		c.usage(c.stdout)
		return 0
	case "version", "-version", "--version":
		fmt.Fprintf(c.stdout, "corral %s\n", version)
		return 0
	case "session":
		err = c.group(ctx, "session", sessionCommands, args[1:])
	case "endpoint":
		err = c.group(ctx, "endpoint", endpointCommands, args[1:])
	case "volume":
		err = c.group(ctx, "volume", volumeCommands, args[1:])
	case "template":
		err = c.group(ctx, "template", templateCommands, args[1:])
	case "run":
		err = c.runJob(ctx, args[1:])
	case "node":
		err = c.group(ctx, "node", nodeCommands, args[1:])
	case "image":
		err = c.group(ctx, "image", imageCommands, args[1:])
	case "user":
		err = c.group(ctx, "user", userCommands, args[1:])
	case "key":
		err = c.group(ctx, "key", keyCommands, args[1:])
	case "policy":
		err = c.group(ctx, "policy", policyCommands, args[1:])
	case "group":
		err = c.group(ctx, "group", groupCommands, args[1:])
	case "queue":
		err = c.queue(ctx, args[1:])
	case "events":
		err = c.events(ctx, args[1:])
	case "keygen":
		err = c.keygen(ctx, args[1:])
	case "tls":
		err = c.group(ctx, "tls", tlsCommands, args[1:])
	case "bench":
		err = c.bench(ctx, args[1:])
	case "system":
		err = c.group(ctx, "system", systemCommands, args[1:])
	case "server":
		err = c.group(ctx, "server", serverCommands, args[1:])
	case "operator":
		err = c.group(ctx, "operator", operatorCommands, args[1:])
	default:
		err = &usageError{cmd: "corral", msg: fmt.Sprintf("unknown command %q", args[0])}
	}
	return c.exit(ctx, err)
}

// group dispatches a subcommand of "session" or "node".
func (c *cli) group(ctx context.Context, name string, cmds []command, args []string) error {
	groupUsage := func(w io.Writer) {
		fmt.Fprintf(w, "Usage: corral %s <subcommand> [flags]\n\nSubcommands:\n", name)
		for _, sc := range cmds {
			fmt.Fprintf(w, "  %-8s  %s\n", sc.name, sc.summary)
		}
		fmt.Fprintf(w, "\nRun 'corral %s <subcommand> -h' for its flags.\n", name)
	}
	if len(args) == 0 {
		return &usageError{cmd: "corral " + name, msg: "missing subcommand"}
	}
	switch args[0] {
	case "help", "-h", "-help", "--help":
		groupUsage(c.stdout)
		return flag.ErrHelp
	}
	for _, sc := range cmds {
		if sc.name == args[0] {
			return sc.run(c, ctx, args[1:])
		}
	}
	names := make([]string, len(cmds))
	for i, sc := range cmds {
		names[i] = sc.name
	}
	return &usageError{cmd: "corral " + name, msg: fmt.Sprintf("unknown subcommand %q: want one of %s", args[0], strings.Join(names, ", "))}
}

// usageError is a mistake on the command line; it exits with code 2.
type usageError struct {
	cmd string // "corral session create", for the hint
	msg string
}

func (e *usageError) Error() string { return e.msg }

// exitCode ends a command with a code and nothing more to print (the exit
// status of an exec'd command).
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// exit prints err as one line on stderr and maps it to an exit code:
// 0 ok, 1 a failed operation or session, 2 a usage error.
func (c *cli) exit(ctx context.Context, err error) int {
	var ue *usageError
	var code exitCode
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(c.stderr, "Error: %s (see '%s -h')\n", oneLine(ue.msg), ue.cmd)
		return 2
	case errors.As(err, &code):
		return int(code)
	}
	fmt.Fprintf(c.stderr, "Error: %s\n", oneLine(describe(ctx, err)))
	return 1
}

// describe words transport errors for a user: what went wrong and what to do.
func describe(ctx context.Context, err error) string {
	if errors.Is(err, context.Canceled) && ctx.Err() != nil {
		return "interrupted"
	}
	var ue *url.Error
	var op *net.OpError
	if errors.As(err, &ue) && errors.As(err, &op) && op.Op == "dial" {
		where := ue.URL
		if u, perr := url.Parse(ue.URL); perr == nil {
			where = u.Scheme + "://" + u.Host
		}
		return fmt.Sprintf("cannot reach corral at %s: %v (is it running? point -address or CORRAL_ADDR at its HTTP API)", where, op.Err)
	}
	if errors.As(err, &ue) {
		return fmt.Sprintf("%s %s: %v", ue.Op, ue.URL, ue.Err)
	}
	return err.Error()
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// flagSet is a subcommand's flags: the standard flag package, errors
// returned rather than printed, and the flags every client command shares.
type flagSet struct {
	*flag.FlagSet
	c        *cli
	cmd      string // "corral session status"
	synopsis string
	summary  string
	address  string
	caCert   string
	token    string
	json     bool
}

// newFlags starts the flags of a client command: -address, and -json for
// read commands when withJSON is set.
func (c *cli) newFlags(cmd, synopsis, summary string, withJSON bool) *flagSet {
	f := c.newLocalFlags(cmd, synopsis, summary)
	addr := c.getenv("CORRAL_ADDR")
	if addr == "" {
		addr = api.DefaultAddress
	}
	f.StringVar(&f.address, "address", addr, "address of corral's HTTP API (env CORRAL_ADDR)")
	f.StringVar(&f.caCert, "ca-cert", c.getenv("CORRAL_CACERT"), "CA certificate to verify an https API address with (env CORRAL_CACERT)")
	f.StringVar(&f.token, "token", "", "API token (default $CORRAL_TOKEN, else ~/.corral/token)")
	if withJSON {
		f.BoolVar(&f.json, "json", false, "print the API's JSON instead of a table")
	}
	return f
}

// newLocalFlags starts the flags of a command that does not talk to the
// API (keygen, tls): no -address, -ca-cert or -token.
func (c *cli) newLocalFlags(cmd, synopsis, summary string) *flagSet {
	f := &flagSet{FlagSet: flag.NewFlagSet(cmd, flag.ContinueOnError), c: c, cmd: "corral " + cmd, synopsis: synopsis, summary: summary}
	f.SetOutput(io.Discard)
	return f
}

func (f *flagSet) printUsage() {
	w := f.c.stdout
	fmt.Fprintf(w, "Usage: %s %s\n\n%s\n", f.cmd, f.synopsis, f.summary)
	n := 0
	f.VisitAll(func(*flag.Flag) { n++ })
	if n == 0 {
		return
	}
	fmt.Fprintf(w, "\nFlags:\n")
	f.SetOutput(w)
	f.PrintDefaults()
	f.SetOutput(io.Discard)
}

// parse reads flags anywhere among the first n positional arguments and
// returns those, then what follows them unparsed: after the n-th
// positional argument or after "--", the rest is a command with its own
// flags. -h prints the usage and returns flag.ErrHelp.
func (f *flagSet) parse(args []string, n int) (pos, rest []string, err error) {
	for {
		if err := f.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				f.printUsage()
				return nil, nil, err
			}
			return nil, nil, f.usageErr("%v", err)
		}
		left := f.Args()
		dashdash := len(left) < len(args) && args[len(args)-len(left)-1] == "--"
		if len(pos) == n || dashdash || len(left) == 0 {
			take := min(n-len(pos), len(left))
			return append(pos, left[:take]...), left[take:], nil
		}
		pos = append(pos, left[0])
		args = left[1:]
	}
}

// parseRef parses a command that takes exactly one REF argument.
func (f *flagSet) parseRef(args []string, what string) (string, error) {
	pos, rest, err := f.parse(args, 1)
	if err != nil {
		return "", err
	}
	if len(pos) == 0 || pos[0] == "" {
		return "", f.usageErr("missing %s", what)
	}
	if len(rest) > 0 {
		return "", f.usageErr("unexpected argument %q after %s", rest[0], what)
	}
	return pos[0], nil
}

// refClient parses a command that takes one REF and returns it with an
// API client.
func (f *flagSet) refClient(args []string, what string) (string, *api.Client, error) {
	ref, err := f.parseRef(args, what)
	if err != nil {
		return "", nil, err
	}
	client, err := f.client()
	return ref, client, err
}

// parseNone parses a command that takes no positional argument.
func (f *flagSet) parseNone(args []string) error {
	_, rest, err := f.parse(args, 0)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return f.usageErr("unexpected argument %q", rest[0])
	}
	return nil
}

func (f *flagSet) usageErr(format string, args ...any) error {
	return &usageError{cmd: f.cmd, msg: fmt.Sprintf(format, args...)}
}

// client returns an API client for -address; a bad address is a usage error.
func (f *flagSet) client() (*api.Client, error) {
	c, err := api.NewClient(f.address)
	if err != nil {
		return nil, f.usageErr("%v", err)
	}
	if f.caCert != "" {
		pool, err := tlsutil.LoadPool(f.caCert)
		if err != nil {
			return nil, f.usageErr("-ca-cert: %v", err)
		}
		c.SetTLS(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})
	}
	tok := strings.TrimSpace(f.token)
	if tok == "" {
		tok = f.c.token()
	}
	c.SetToken(tok)
	return c, nil
}

// token is the API token: $CORRAL_TOKEN, else the file `corral dev` writes
// (~/.corral/token), so the dev flow needs no export.
func (c *cli) token() string {
	if t := strings.TrimSpace(c.getenv("CORRAL_TOKEN")); t != "" {
		return t
	}
	if home := c.getenv("HOME"); home != "" {
		if b, err := os.ReadFile(filepath.Join(home, ".corral", "token")); err == nil {
			return strings.TrimSpace(string(b))
		}
	}
	return ""
}

// envFlag collects repeatable -env KEY=VALUE flags.
type envFlag map[string]string

func (e envFlag) String() string {
	parts := make([]string, 0, len(e))
	for k, v := range e {
		parts = append(parts, k+"="+v)
	}
	return strings.Join(parts, ",")
}

func (e envFlag) Set(v string) error {
	k, val, ok := strings.Cut(v, "=")
	if !ok || k == "" {
		return errors.New("want KEY=VALUE")
	}
	e[k] = val
	return nil
}
