package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/structs"
)

func (c *cli) nodeList(ctx context.Context, args []string) error {
	f := c.newFlags("node list", "[flags]", "List the agents the servers know, with used/total CPU, memory and GPUs (whole GPUs, then each MIG profile).", true)
	if err := f.parseNone(args); err != nil {
		return err
	}
	client, err := f.client()
	if err != nil {
		return err
	}
	agents, err := client.ListAgents(ctx)
	if err != nil {
		return err
	}
	if f.json {
		return printJSON(c.stdout, agents)
	}
	return renderAgents(c.stdout, agents, time.Now())
}

func (c *cli) nodeStatus(ctx context.Context, args []string) error {
	f := c.newFlags("node status", "ID [flags]", "Show one agent (by ID, unique ID prefix or name), each of its resource slots and\n"+
		"each of its GPUs: health, utilisation and the kernel holding it.", true)
	id, client, err := f.refClient(args, "agent ID, ID prefix or name")
	if err != nil {
		return err
	}
	a, err := client.GetAgent(ctx, id)
	if err != nil {
		return err
	}
	if f.json {
		return printJSON(c.stdout, a)
	}
	return renderAgentWith(c.stdout, a, time.Now(), gpuHolderNames(ctx, client, a))
}

// gpuHolderNames finds, for the kernels holding the agent's devices, their
// session (name and short ID) and hostname, e.g. "train (1a2b3c4d) main1".
// It is best effort: a kernel it cannot find is shown by its ID.
func gpuHolderNames(ctx context.Context, client *api.Client, a *structs.Agent) func(string) string {
	if len(a.GPUHolders) == 0 {
		return nil
	}
	want := map[string]bool{}
	for _, k := range a.GPUHolders {
		want[k] = true
	}
	sessions, err := client.ListSessions(ctx, "")
	if err != nil {
		return nil
	}
	names := map[string]string{}
	for _, s := range sessions {
		if s.Status.Terminal() || !slices.ContainsFunc(s.KernelIDs, func(id string) bool { return want[id] }) {
			continue
		}
		d, err := client.GetSession(ctx, s.ID)
		if err != nil {
			continue
		}
		for _, k := range d.Kernels {
			if want[k.ID] {
				name := shortID(s.ID)
				if s.Name != "" {
					name = s.Name + " (" + name + ")"
				}
				names[k.ID] = name + " " + k.Hostname
			}
		}
	}
	return func(id string) string { return names[id] }
}

func (c *cli) nodeDrain(ctx context.Context, args []string) error {
	f := c.newFlags("node drain", "ID [-force] [flags]", "Stop new placements on an agent; with -force also terminate the kernels it runs.", true)
	force := f.Bool("force", false, "also terminate the kernels running on the agent")
	return c.agentCommand(ctx, f, args, func(cl *api.Client, ctx context.Context, id string) (*structs.Agent, error) {
		return cl.DrainAgent(ctx, id, true, *force)
	})
}

func (c *cli) nodeEligible(ctx context.Context, args []string) error {
	f := c.newFlags("node eligible", "ID [flags]", "Let a drained agent take new placements again.", true)
	return c.agentCommand(ctx, f, args, func(cl *api.Client, ctx context.Context, id string) (*structs.Agent, error) {
		return cl.DrainAgent(ctx, id, false, false)
	})
}

func (c *cli) nodeLeave(ctx context.Context, args []string) error {
	f := c.newFlags("node leave", "ID [flags]", "Give a node up now: the agent is TERMINATED, its kernels end and batch sessions\n"+
		"with retries are re-queued. Stopping an agent (SIGTERM) never does this: its kernels\n"+
		"keep running and the next start reattaches them. Stop the agent after leaving.", true)
	return c.agentCommand(ctx, f, args, (*api.Client).LeaveAgent)
}

// nodeRevoke revokes the certificates the cluster CA issued to a node.
func (c *cli) nodeRevoke(ctx context.Context, args []string) error {
	f := c.newFlags("node revoke", "NODE [flags]", "Revoke every certificate the cluster CA issued to a node (agent name, ID or ID\n"+
		"prefix): the servers refuse its connections and calls at once and end its kernel\n"+
		"stream. To let the node back, remove its data dir's tls/ and join it again.", true)
	node, client, err := f.refClient(args, "agent name, ID or ID prefix")
	if err != nil {
		return err
	}
	res, err := client.RevokeNode(ctx, node)
	if err != nil {
		return err
	}
	if f.json {
		return printJSON(c.stdout, res)
	}
	fmt.Fprintf(c.stdout, "Revoked %d certificate(s) of node %s: %s\n", len(res.Serials), res.Node, strings.Join(res.Serials, ", "))
	return nil
}

// agentCommand runs a command on one agent named by ID, prefix or name
// and prints the agent as the server answered.
func (c *cli) agentCommand(ctx context.Context, f *flagSet, args []string, call func(*api.Client, context.Context, string) (*structs.Agent, error)) error {
	id, client, err := f.refClient(args, "agent ID, ID prefix or name")
	if err != nil {
		return err
	}
	a, err := call(client, ctx, id)
	if err != nil {
		return err
	}
	if f.json {
		return printJSON(c.stdout, a)
	}
	return renderAgent(c.stdout, a, time.Now())
}
