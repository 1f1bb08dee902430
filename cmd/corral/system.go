package main

import (
	"context"
	"flag"
	"fmt"
	"time"
)

var systemCommands = []command{
	{"gc", "[-older-than DURATION] [flags]", "delete ended sessions and their kernels now (admin)", (*cli).systemGC},
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
