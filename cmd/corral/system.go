package main

import (
	"context"
	"flag"
	"fmt"
	"time"
)

var systemCommands = []command{
	{"gc", "[-older-than DURATION] [flags]", "delete ended sessions and their kernels now (admin)", (*cli).systemGC},
	{"join-token", "[flags]", "print the token agents join with: corral agent -join-token TOKEN (admin)", (*cli).systemJoinToken},
}

// systemJoinToken prints the cluster's join token.
func (c *cli) systemJoinToken(ctx context.Context, args []string) error {
	f := c.newFlags("system join-token", "[flags]",
		"Print the token agents join the cluster with, <ca-sha256>:<secret>:\n"+
			"  corral agent -join SERVER:8642 -join-token TOKEN\n"+
			"It pins the cluster CA by its hash and holds the secret that gets an agent its\n"+
			"certificate: keep it as safe as an admin key. Needs an admin key.", true)
	if err := f.parseNone(args); err != nil {
		return err
	}
	client, err := f.client()
	if err != nil {
		return err
	}
	tok, err := client.JoinToken(ctx)
	if err != nil {
		return err
	}
	if f.json {
		return printJSON(c.stdout, map[string]string{"join_token": tok})
	}
	fmt.Fprintln(c.stdout, tok)
	return nil
}

// systemGC forces a garbage collection of ended sessions.
func (c *cli) systemGC(ctx context.Context, args []string) error {
	f := c.newFlags("system gc", "[-older-than DURATION] [flags]",
		"Delete, now, the sessions that ended (TERMINATED, ERROR, CANCELLED) more than\n"+
			"DURATION ago, with their kernels; the server's leader also does this on its own\n"+
			"after -gc-retention. Needs an admin key.", true)
	older := f.Duration("older-than", -1, "collect sessions that ended more than this long ago (default: the server's -gc-retention; 0: every ended session)")
	if err := f.parseNone(args); err != nil {
		return err
	}
	set := false
	f.Visit(func(fl *flag.Flag) { set = set || fl.Name == "older-than" })
	if set && *older < 0 {
		return f.usageErr("invalid -older-than %s: want 0 or a positive duration such as 1h", *older)
	}
	client, err := f.client()
	if err != nil {
		return err
	}
	res, err := client.SystemGC(ctx, *older)
	if err != nil {
		return err
	}
	if f.json {
		return printJSON(c.stdout, res)
	}
	fmt.Fprintf(c.stdout, "Collected %d sessions and %d kernels that ended before %s.\n", res.Sessions, res.Kernels, res.Cutoff.Local().Format(time.RFC3339))
	return nil
}
