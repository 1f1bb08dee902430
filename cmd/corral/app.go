package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/structs"
)

// portFlag collects -port NAME[:PORT][/http|tcp] of session create.
type portFlag struct{ ports *[]structs.ServicePort }

func (f portFlag) String() string {
	if f.ports == nil {
		return ""
	}
	parts := make([]string, len(*f.ports))
	for i, p := range *f.ports {
		parts[i] = fmt.Sprintf("%s:%d/%s", p.Name, p.Port, p.Protocol)
	}
	return strings.Join(parts, ",")
}

func (f portFlag) Set(v string) error {
	p, err := structs.ParseServicePort(v)
	if err != nil {
		return err
	}
	*f.ports = append(*f.ports, p)
	return nil
}

// portUsage is the help of session create's -port.
const portUsage = "app on a port of main1, `NAME[:PORT][/http|tcp]` (repeatable); well-known names need no port: " +
	"jupyter, tensorboard, vscode, code-server, ttyd, mlflow, streamlit, gradio (http), ssh (tcp). Reach it with 'corral session app'"

func (c *cli) sessionApp(ctx context.Context, args []string) error {
	f := c.newFlags("session app", "REF [NAME] [flags]",
		"Open a local port tunnelled to an app of a session (a service port of main1) through the server; "+
			"without NAME, list the session's apps. With -url, print a signed URL that opens an http app in a browser.", true)
	bind := f.String("bind", "127.0.0.1:0", "local `ADDR:PORT` to listen on (port 0: any free port)")
	urlOnly := f.Bool("url", false, "print a signed browser URL for the app instead of opening a port")
	ttl := f.Duration("ttl", time.Hour, "with -url: how long the URL works (at most 24h)")
	pos, rest, err := f.parse(args, 2)
	if err != nil {
		return err
	}
	if len(pos) == 0 || pos[0] == "" {
		return f.usageErr("missing session ID, ID prefix or name")
	}
	if len(rest) > 0 {
		return f.usageErr("unexpected argument %q after the app's name", rest[0])
	}
	client, err := f.client()
	if err != nil {
		return err
	}
	ref := pos[0]
	if len(pos) == 1 {
		apps, err := client.ListApps(ctx, ref)
		if err != nil {
			return err
		}
		if f.json {
			return printJSON(c.stdout, apps)
		}
		return renderApps(c.stdout, apps)
	}
	name := pos[1]
	if *urlOnly {
		u, err := client.AppURL(ctx, ref, name, *ttl)
		if err != nil {
			return err
		}
		if f.json {
			return printJSON(c.stdout, u)
		}
		fmt.Fprintf(c.stdout, "%s\n(valid until %s)\n", u.URL, u.ExpiresAt.Local().Format(time.RFC3339))
		return nil
	}
	apps, err := client.ListApps(ctx, ref)
	if err != nil {
		return err
	}
	var app *api.App
	for i := range apps.Apps {
		if apps.Apps[i].Name == name {
			app = &apps.Apps[i]
		}
	}
	if app == nil {
		names := make([]string, len(apps.Apps))
		for i, a := range apps.Apps {
			names[i] = a.Name
		}
		return fmt.Errorf("session %s has no app %q (its apps: %s)", apps.SessionID, name, strings.Join(names, ", "))
	}
	ln, err := net.Listen("tcp", *bind)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", *bind, err)
	}
	defer ln.Close()
	hint := ""
	if app.Protocol == structs.ProtocolHTTP {
		hint = fmt.Sprintf(": open http://%s/", ln.Addr())
	}
	fmt.Fprintf(c.stdout, "forwarding %s to app %s of session %s (%s port %d/%s)%s\n", ln.Addr(), name, apps.SessionID, apps.Kernel, app.Port, app.Protocol, hint)
	err = client.ServeApp(ctx, ln, apps.SessionID, name, func(err error) {
		fmt.Fprintf(c.stderr, "app %s: %v\n", name, err)
	})
	if ctx.Err() != nil {
		return nil // interrupted: the normal end
	}
	return err
}

// renderApps writes a session's apps as a table.
func renderApps(w io.Writer, apps *api.AppsResponse) error {
	if len(apps.Apps) == 0 {
		fmt.Fprintf(w, "session %s declares no apps (create it with -port NAME:PORT, or use an image labelled %s)\n", apps.SessionID, structs.LabelServicePorts)
		return nil
	}
	tw := newTable(w)
	fmt.Fprintln(tw, "APP\tPORT\tPROTOCOL\tFROM\tPROXY")
	for _, a := range apps.Apps {
		from, proxy := "request", "-"
		if a.Source != "" {
			from = a.Source
		}
		if a.ProxyPath != "" {
			proxy = a.ProxyPath
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\n", a.Name, a.Port, a.Protocol, from, proxy)
	}
	return tw.Flush()
}

// renderSessionApps writes the apps section of session status (nothing
// for a session without apps).
func renderSessionApps(w io.Writer, d *api.SessionDetail) {
	var main1 *structs.Kernel
	for _, k := range d.Kernels {
		if k.Hostname == "main1" {
			main1 = k
		}
	}
	var image []structs.ServicePort
	if main1 != nil {
		image = main1.ImagePorts
	}
	ports := structs.MergeServicePorts(d.Session.ServicePorts, image)
	if len(ports) == 0 {
		return
	}
	out := &api.AppsResponse{SessionID: d.Session.ID}
	for _, p := range ports {
		a := api.App{ServicePort: p}
		if p.Protocol == structs.ProtocolHTTP {
			a.ProxyPath = api.AppProxyPath(d.Session.ID, p.Name)
		}
		out.Apps = append(out.Apps, a)
	}
	fmt.Fprintln(w, "\nApps (corral session app "+shortID(d.Session.ID)+" NAME)")
	_ = renderApps(w, out)
}
