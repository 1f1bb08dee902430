package main

import (
	"context"
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/structs"
)

var endpointCommands = []command{
	{"create", "NAME -image IMG -port N [flags] [-- CMD [ARGS...]]", "create an inference endpoint: replicas kept, routed and scaled", (*cli).endpointCreate},
	{"list", "[flags]", "list endpoints with their replica counts and load", (*cli).endpointList},
	{"status", "NAME [flags]", "show an endpoint's replicas, health, load and scale events", (*cli).endpointStatus},
	{"update", "NAME [flags]", "change the image (rolling update), replica counts or targets", (*cli).endpointUpdate},
	{"delete", "NAME [flags]", "delete an endpoint and destroy its replicas", (*cli).endpointDelete},
}

func (c *cli) endpointCreate(ctx context.Context, args []string) error {
	f := c.newFlags("endpoint create", "NAME -image IMG -port N [flags] [-- CMD [ARGS...]]",
		"Create an inference endpoint: replica sessions of type inference running IMG and\n"+
			"serving HTTP on -port, kept at the desired count (dead or unhealthy replicas are\n"+
			"replaced) and reached through every server at /v1/endpoints/NAME/... With\n"+
			"-target-rps or -target-concurrency the count follows the load between -min and -max.\n"+
			"The endpoint's token is printed once.", true)
	var r api.CreateEndpointRequest
	f.StringVar(&r.Image, "image", "", "image of the replicas")
	f.StringVar(&r.Driver, "driver", "", "kernel driver (default runc)")
	f.IntVar(&r.Port, "port", 0, "port the replicas serve HTTP on")
	f.IntVar(&r.Replicas, "replicas", 0, "replicas to start with (default: -min, or 1)")
	f.IntVar(&r.MinReplicas, "min", 0, "fewest replicas the autoscaler keeps (default: -replicas, or 1 with a target)")
	f.IntVar(&r.MaxReplicas, "max", 0, "most replicas the autoscaler starts (default: -replicas, or 8 with a target)")
	f.Float64Var(&r.TargetRPS, "target-rps", 0, "autoscale: requests per second per replica")
	f.Float64Var(&r.TargetConcurrency, "target-concurrency", 0, "autoscale: requests in flight per replica")
	f.StringVar(&r.ScaleUpCooldown, "scale-up-cooldown", "", "least time between two scale-ups (default 10s)")
	f.StringVar(&r.ScaleDownDelay, "scale-down-delay", "", "how long the load must ask for fewer replicas before they go (default 1m)")
	f.StringVar(&r.HealthPath, "health", "", "health check path, answered 2xx by a ready replica (default /)")
	f.BoolVar(&r.Public, "public", false, "take requests without a token")
	f.StringVar(&r.ResourceGroup, "group", "", "resource group of the replicas")
	cpu := f.String("cpu", "", "CPU cores per replica")
	mem := f.String("mem", "", "memory per replica, e.g. 1G")
	gpu := f.String("gpu", "", "whole GPUs per replica")
	env := envFlag{}
	f.Var(env, "env", "environment variable `KEY=VALUE` of the replicas (repeatable)")
	pos, command, err := f.parse(args, 1)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		return f.usageErr("missing the endpoint NAME")
	}
	r.Name, r.Command = pos[0], command
	if len(env) > 0 {
		r.Env = env
	}
	res := structs.Slots{}
	if *cpu != "" {
		q, err := parseSlot(structs.SlotCPU, *cpu)
		if err != nil {
			return f.usageErr("-cpu: %v", err)
		}
		res[structs.SlotCPU] = q
	}
	if *mem != "" {
		q, err := parseSlot(structs.SlotMem, *mem)
		if err != nil {
			return f.usageErr("-mem: %v", err)
		}
		res[structs.SlotMem] = q
	}
	if *gpu != "" {
		q, err := parseDevices(*gpu)
		if err != nil {
			return f.usageErr("-gpu: %v", err)
		}
		res[structs.SlotCUDADevice] = q
	}
	if len(res) > 0 {
		r.Resources = res
	}
	client, err := f.client()
	if err != nil {
		return err
	}
	d, err := client.CreateEndpoint(ctx, &r)
	if err != nil {
		return err
	}
	if f.json {
		return printJSON(c.stdout, d)
	}
	fmt.Fprintf(c.stdout, "endpoint %s created: %d replicas (min %d, max %d)\n", d.Endpoint.Name, d.Endpoint.Replicas, d.Endpoint.MinReplicas, d.Endpoint.MaxReplicas)
	fmt.Fprintf(c.stdout, "route:  %s%s\n", client.Address(), d.Path)
	if d.Endpoint.Public {
		fmt.Fprintln(c.stdout, "access: public")
	} else {
		fmt.Fprintf(c.stdout, "token:  %s\n", d.Token)
	}
	return nil
}

func (c *cli) endpointList(ctx context.Context, args []string) error {
	f := c.newFlags("endpoint list", "[flags]", "List endpoints.", true)
	if err := f.parseNone(args); err != nil {
		return err
	}
	client, err := f.client()
	if err != nil {
		return err
	}
	eps, err := client.ListEndpoints(ctx)
	if err != nil {
		return err
	}
	if f.json {
		return printJSON(c.stdout, eps)
	}
	tw := newTable(c.stdout)
	fmt.Fprintln(tw, "NAME\tIMAGE\tREPLICAS\tHEALTHY\tMIN-MAX\tTARGET\tRPS\tOWNER")
	for _, d := range eps {
		e := d.Endpoint
		fmt.Fprintf(tw, "%s\t%s\t%d/%d\t%d\t%d-%d\t%s\t%.1f\t%s\n", e.Name, e.Image, len(d.Replicas), e.Replicas, healthyCount(d), e.MinReplicas, e.MaxReplicas, target(e), d.RPS, e.Owner)
	}
	return tw.Flush()
}

func healthyCount(d *api.EndpointDetail) int {
	n := 0
	for _, r := range d.Replicas {
		if r.Health == "healthy" && !r.Draining {
			n++
		}
	}
	return n
}

func target(e *structs.Endpoint) string {
	switch {
	case e.TargetRPS > 0:
		return fmt.Sprintf("%g rps", e.TargetRPS)
	case e.TargetConcurrency > 0:
		return fmt.Sprintf("%g in flight", e.TargetConcurrency)
	}
	return "-"
}

func (c *cli) endpointStatus(ctx context.Context, args []string) error {
	f := c.newFlags("endpoint status", "NAME [flags]", "Show an endpoint: replicas with status and health, load, scale events.", true)
	name, client, err := f.refClient(args, "endpoint NAME")
	if err != nil {
		return err
	}
	d, err := client.GetEndpoint(ctx, name)
	if err != nil {
		return err
	}
	if f.json {
		return printJSON(c.stdout, d)
	}
	e := d.Endpoint
	access := "token"
	if e.Public {
		access = "public"
	}
	fmt.Fprintf(c.stdout, "Endpoint:    %s (owner %s, %s)\n", e.Name, e.Owner, access)
	fmt.Fprintf(c.stdout, "Route:       %s%s\n", client.Address(), d.Path)
	fmt.Fprintf(c.stdout, "Image:       %s (generation %d, port %d, health %s)\n", e.Image, e.Generation, e.Port, e.HealthPath)
	fmt.Fprintf(c.stdout, "Replicas:    %d desired, %d healthy (min %d, max %d, target %s)\n", e.Replicas, healthyCount(d), e.MinReplicas, e.MaxReplicas, target(e))
	fmt.Fprintf(c.stdout, "Load:        %.1f req/s, %.1f in flight\n\n", d.RPS, d.Concurrency)
	tw := newTable(c.stdout)
	fmt.Fprintln(tw, "SESSION\tSTATUS\tGEN\tHEALTH\tAGENT\tAGE")
	for _, r := range d.Replicas {
		st := r.Status
		if r.Draining {
			st += " (draining)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", r.SessionID[:8], st, r.Generation, r.Health, r.Agent, time.Since(r.Created).Round(time.Second))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(e.Events) > 0 {
		fmt.Fprintln(c.stdout, "\nEvents:")
		for _, ev := range e.Events {
			fmt.Fprintf(c.stdout, "  %s  %-7s  %s\n", ev.Time.Local().Format("15:04:05"), ev.Kind, ev.Reason)
		}
	}
	return nil
}

func (c *cli) endpointUpdate(ctx context.Context, args []string) error {
	f := c.newFlags("endpoint update", "NAME [flags]",
		"Change an endpoint. A new -image starts a rolling update: one new replica starts,\n"+
			"and once it is healthy an old one drains and goes, until all run the new image.", true)
	image := f.String("image", "", "new image (rolling update)")
	replicas := f.Int("replicas", -1, "desired replicas now")
	minR := f.Int("min", -1, "fewest replicas")
	maxR := f.Int("max", -1, "most replicas")
	rps := f.Float64("target-rps", -1, "requests per second per replica (0: no autoscaling)")
	conc := f.Float64("target-concurrency", -1, "requests in flight per replica (0: no autoscaling)")
	up := f.String("scale-up-cooldown", "", "least time between two scale-ups")
	down := f.String("scale-down-delay", "", "how long the load must ask for fewer replicas before they go")
	health := f.String("health", "", "health check path")
	public := f.String("public", "", "true: take requests without a token; false: want one")
	name, client, err := f.refClient(args, "endpoint NAME")
	if err != nil {
		return err
	}
	var r api.UpdateEndpointRequest
	set := map[string]bool{}
	f.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	if set["image"] {
		r.Image = image
	}
	if set["replicas"] {
		r.Replicas = replicas
	}
	if set["min"] {
		r.MinReplicas = minR
	}
	if set["max"] {
		r.MaxReplicas = maxR
	}
	if set["target-rps"] {
		r.TargetRPS = rps
	}
	if set["target-concurrency"] {
		r.TargetConcurrency = conc
	}
	if set["scale-up-cooldown"] {
		r.ScaleUpCooldown = up
	}
	if set["scale-down-delay"] {
		r.ScaleDownDelay = down
	}
	if set["health"] {
		r.HealthPath = health
	}
	if set["public"] {
		b := strings.EqualFold(*public, "true")
		if !b && !strings.EqualFold(*public, "false") {
			return f.usageErr("-public %q: want true or false", *public)
		}
		r.Public = &b
	}
	if !(set["image"] || set["replicas"] || set["min"] || set["max"] || set["target-rps"] || set["target-concurrency"] ||
		set["scale-up-cooldown"] || set["scale-down-delay"] || set["health"] || set["public"]) {
		return f.usageErr("nothing to change: give -image, -replicas, -min, -max, a target, -health or -public")
	}
	d, err := client.UpdateEndpoint(ctx, name, &r)
	if err != nil {
		return err
	}
	if f.json {
		return printJSON(c.stdout, d)
	}
	e := d.Endpoint
	fmt.Fprintf(c.stdout, "endpoint %s updated: generation %d, %d replicas (min %d, max %d, target %s)\n", e.Name, e.Generation, e.Replicas, e.MinReplicas, e.MaxReplicas, target(e))
	return nil
}

func (c *cli) endpointDelete(ctx context.Context, args []string) error {
	f := c.newFlags("endpoint delete", "NAME [flags]", "Delete an endpoint and destroy its replicas.", false)
	name, client, err := f.refClient(args, "endpoint NAME")
	if err != nil {
		return err
	}
	if err := client.DeleteEndpoint(ctx, name); err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "endpoint %s deleted\n", name)
	return nil
}
