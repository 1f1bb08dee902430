package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/structs"
)

var imageCommands = []command{
	{"list", "[flags]", "list the images cached on the agents", (*cli).imageList},
	{"pull", "REF -agent ID [flags]", "pull an image into an agent's cache", (*cli).imagePull},
	{"rm", "REF -agent ID [flags]", "remove an image from an agent's cache (refused while a kernel uses it)", (*cli).imageRemove},
}

func (c *cli) imageRemove(ctx context.Context, args []string) error {
	img, err := c.imageOnAgent(ctx, args, "image rm", "Remove an image from one agent's cache: its record, its unpacked files and the layers\nno other image uses (admin only). Refused while a kernel that has not ended uses it.",
		(*api.Client).RemoveImage)
	if err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "removed %s from %s: %s (%s)\n", img.Ref, img.AgentName, img.Digest, structs.FormatBytes(structs.Whole(img.Size)))
	return nil
}

// imageOnAgent parses "REF -agent ID" and makes one image call on that
// agent's cache.
func (c *cli) imageOnAgent(ctx context.Context, args []string, name, help string, call func(*api.Client, context.Context, *api.ImagePullRequest) (*api.AgentImage, error)) (*api.AgentImage, error) {
	f := c.newFlags(name, "REF -agent ID [flags]", help, false)
	agent := f.String("agent", "", "agent ID, ID prefix or name (required)")
	ref, err := f.parseRef(args, "image reference")
	if err != nil {
		return nil, err
	}
	if *agent == "" {
		return nil, f.usageErr("-agent is required")
	}
	client, err := f.client()
	if err != nil {
		return nil, err
	}
	return call(client, ctx, &api.ImagePullRequest{Ref: ref, Agent: *agent})
}

func (c *cli) imageList(ctx context.Context, args []string) error {
	f := c.newFlags("image list", "[flags]", "List the images cached on every alive agent.", true)
	if err := f.parseNone(args); err != nil {
		return err
	}
	client, err := f.client()
	if err != nil {
		return err
	}
	imgs, err := client.ListImages(ctx)
	if err != nil {
		return err
	}
	if f.json {
		return printJSON(c.stdout, imgs)
	}
	return renderImages(c.stdout, imgs, time.Now())
}

func (c *cli) imagePull(ctx context.Context, args []string) error {
	img, err := c.imageOnAgent(ctx, args, "image pull", "Pull an image into one agent's cache (warm it before sessions need it).", (*api.Client).PullImage)
	if err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "pulled %s on %s: %s (%s, %s unpacked)\n", img.Ref, img.AgentName, img.Digest,
		structs.FormatBytes(structs.Whole(img.Size)), structs.FormatBytes(structs.Whole(img.UnpackedSize)))
	return nil
}

func renderImages(w io.Writer, imgs []*api.AgentImage, now time.Time) error {
	tw := newTable(w)
	fmt.Fprintln(tw, "AGENT\tREF\tDIGEST\tSIZE\tUNPACKED\tPULLED")
	for _, img := range imgs {
		digest := img.Digest
		if len(digest) > 19 {
			digest = digest[:19]
		}
		unpacked := "-"
		if img.UnpackedSize > 0 {
			unpacked = structs.FormatBytes(structs.Whole(img.UnpackedSize))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s ago\n", dash(img.AgentName), img.Ref, digest, structs.FormatBytes(structs.Whole(img.Size)), unpacked, since(img.PulledAt, now))
	}
	return tw.Flush()
}
