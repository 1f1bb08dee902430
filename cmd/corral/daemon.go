package main

// runDev, runServer and runAgent start the long-running roles. They are
// wired in this file only; main.go dispatches to them.

func runDev(args []string) int    { return runDaemon("dev", args) }
func runServer(args []string) int { return runDaemon("server", args) }
func runAgent(args []string) int  { return runDaemon("agent", args) }

func runDaemon(role string, args []string) int {
	_ = role
	_ = args
	return 1
}
