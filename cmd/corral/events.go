package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/structs"
)

// events follows GET /v1/events and prints one line per event (or one
// JSON object per event with -json). It resumes by itself after a broken
// connection, from the last index it printed.
func (c *cli) events(ctx context.Context, args []string) error {
	f := c.newFlags("events", "[-topic session,kernel,node,endpoint] [-index N] [flags]",
		"Follow changes to sessions, kernels, nodes and endpoints as they happen (see docs/events.md).", true)
	topic := f.String("topic", "", "comma-separated topics: session, kernel, node, endpoint (default: all)")
	index := f.Uint64("index", 0, "print the events after this raft index, then follow (default: from now)")
	if err := f.parseNone(args); err != nil {
		return err
	}
	client, err := f.client()
	if err != nil {
		return err
	}
	var topics []string
	for _, t := range strings.Split(*topic, ",") {
		if t = strings.TrimSpace(t); t != "" {
			topics = append(topics, t)
		}
	}
	last := *index
	print := func(b *api.EventBatch) error {
		for _, e := range b.Events {
			if f.json {
				line, err := json.Marshal(e)
				if err != nil {
					return err
				}
				fmt.Fprintf(c.stdout, "%s\n", line)
				continue
			}
			fmt.Fprintln(c.stdout, eventLine(e))
		}
		last = b.Index
		return nil
	}
	for {
		err := client.Events(ctx, topics, last, print)
		var apiErr *api.Error
		switch {
		case ctx.Err() != nil:
			return nil // interrupted: the normal end of following
		case errors.As(err, &apiErr):
			if api.IsGone(err) {
				return fmt.Errorf("%s (resume with -index 0 to follow from now)", apiErr.Message)
			}
			return err
		}
		fmt.Fprintf(c.stderr, "events: %s; resuming from index %d\n", oneLine(describe(ctx, err)), last)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
}

// eventLine is the one-line form of an event: index, topic, type, short
// key, then what changed.
func eventLine(e api.Event) string {
	head := fmt.Sprintf("%-8d %-7s %-7s %s", e.Index, e.Topic, e.Type, shortID(e.Key))
	switch e.Topic {
	case api.TopicSession:
		var s structs.Session
		if json.Unmarshal(e.Payload, &s) == nil {
			return fmt.Sprintf("%s  %s name=%s owner=%s group=%s%s", head, s.Status, dash(s.Name), dash(s.Owner), s.ResourceGroup, info(s.StatusInfo))
		}
	case api.TopicKernel:
		var k structs.Kernel
		if json.Unmarshal(e.Payload, &k) == nil {
			return fmt.Sprintf("%s  %s session=%s agent=%s%s", head, k.Status, shortID(k.SessionID), dash(shortID(k.AgentID)), info(k.StatusInfo))
		}
	case api.TopicNode:
		var a structs.Agent
		if json.Unmarshal(e.Payload, &a) == nil {
			return fmt.Sprintf("%s  %s name=%s group=%s drain=%t%s", head, a.Status, a.Name, a.ResourceGroup, a.Drain, info(a.StatusInfo))
		}
	case api.TopicEndpoint:
		var ep structs.Endpoint
		if json.Unmarshal(e.Payload, &ep) == nil {
			return fmt.Sprintf("%-8d %-7s %-7s %s  replicas=%d owner=%s group=%s", e.Index, e.Topic, e.Type, ep.Name, ep.Replicas, dash(ep.Owner), dash(ep.ResourceGroup))
		}
	}
	return head
}

func info(s string) string {
	if s == "" {
		return ""
	}
	return fmt.Sprintf(" (%s)", oneLine(s))
}
