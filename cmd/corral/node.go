package main

import (
	"context"
	"time"
)

func (c *cli) nodeList(ctx context.Context, args []string) error {
	f := c.newFlags("node list", "[flags]", "List the agents the servers know, with used/total CPU and memory.", true)
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
	f := c.newFlags("node status", "ID [flags]", "Show one agent (by ID, unique ID prefix or name) and each of its resource slots.", true)
	id, err := f.parseRef(args, "agent ID, ID prefix or name")
	if err != nil {
		return err
	}
	client, err := f.client()
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
	return renderAgent(c.stdout, a, time.Now())
}
