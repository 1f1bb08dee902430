package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/structs"
)

var volumeCommands = []command{
	{"create", "NAME [-backend B] [-group G] [-quota 100G]", "create a volume of yours on a storage backend", (*cli).volumeCreate},
	{"list", "[flags]", "list your volumes and those shared with you, with usage and quota", (*cli).volumeList},
	{"delete", "NAME", "delete a volume (refused while a live session mounts it; the files stay)", (*cli).volumeDelete},
	{"share", "NAME -user U [-ro]", "let another user mount a volume of yours", (*cli).volumeShare},
	{"unshare", "NAME -user U", "take a user's share of a volume away", (*cli).volumeUnshare},
	{"sftp", "NAME [-bind 127.0.0.1:PORT]", "start (or reuse) an SFTP system session on a volume and serve it on a local port", (*cli).volumeSFTP},
	{"cp", "SRC DST [-i KEY]", "copy a file to (LOCAL NAME:/path) or from (NAME:/path LOCAL) a volume over SFTP", (*cli).volumeCp},
}

var sshKeyCommands = []command{
	{"add", "FILE|-", "add an SSH public key (a .pub file or stdin) that SFTP sessions accept", (*cli).sshKeyAdd},
	{"list", "", "list your SSH public keys", (*cli).sshKeyList},
}

func (c *cli) volumeCreate(ctx context.Context, args []string) error {
	f := c.newFlags("volume create", "NAME [-backend B] [-group G] [-quota 100G]", "Create a volume: a directory of yours on a storage backend that agents reach\n(-volume-root on agents), mounted into sessions with -volume NAME:/path.", true)
	var r api.CreateVolumeRequest
	f.StringVar(&r.Backend, "backend", "", "storage backend (default: the only one the agents reach)")
	f.StringVar(&r.ResourceGroup, "group", "", "resource group whose sessions may mount it (default: any)")
	f.StringVar(&r.Quota, "quota", "", "size it may reach, e.g. 100G (measured and shown; see docs/volumes.md)")
	pos, _, err := f.parse(args, 1)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return f.usageErr("give the volume NAME")
	}
	r.Name = pos[0]
	client, err := f.client()
	if err != nil {
		return err
	}
	v, err := client.CreateVolume(ctx, &r)
	if err != nil {
		return err
	}
	if f.json {
		return printJSON(c.stdout, v)
	}
	fmt.Fprintf(c.stdout, "volume %s created on backend %s\n", v.Name, v.Backend)
	return nil
}

func (c *cli) volumeList(ctx context.Context, args []string) error {
	f := c.newFlags("volume list", "[flags]", "List your volumes and those shared with you (admins: all), with usage.", true)
	if err := f.parseNone(args); err != nil {
		return err
	}
	client, err := f.client()
	if err != nil {
		return err
	}
	l, err := client.Volumes(ctx)
	if err != nil {
		return err
	}
	if f.json {
		return printJSON(c.stdout, l)
	}
	tw := newTable(c.stdout)
	fmt.Fprintln(tw, "NAME\tOWNER\tBACKEND\tACCESS\tUSAGE\tFILES\tQUOTA\tSHARED WITH")
	for _, v := range l.Volumes {
		name := v.Name
		if v.Access != "owner" {
			name = v.ID
		}
		usage := structs.FormatBytes(structs.Quantity(v.UsageBytes) * structs.QuantityScale)
		if v.UsageError != "" {
			usage = "? (" + v.UsageError + ")"
		}
		quota := "-"
		if v.QuotaBytes > 0 {
			quota = structs.FormatBytes(structs.Quantity(v.QuotaBytes) * structs.QuantityScale)
			if v.QuotaEnforcement != "" {
				quota += " " + v.QuotaEnforcement
			}
			if v.UsageBytes > v.QuotaBytes {
				quota += " (OVER)"
			}
		}
		var shares []string
		for _, s := range v.Shares {
			mode := "rw"
			if s.ReadOnly {
				mode = "ro"
			}
			shares = append(shares, s.User+":"+mode)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", name, v.Owner, v.Backend, v.Access, usage, v.UsageFiles, quota, strings.Join(shares, ","))
	}
	return tw.Flush()
}

func (c *cli) volumeDelete(ctx context.Context, args []string) error {
	f := c.newFlags("volume delete", "NAME", "Delete a volume of yours; refused while a live session mounts it. Its files stay on the backend.", false)
	pos, _, err := f.parse(args, 1)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return f.usageErr("give the volume NAME")
	}
	client, err := f.client()
	if err != nil {
		return err
	}
	if err := client.DeleteVolume(ctx, pos[0]); err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "volume %s deleted\n", pos[0])
	return nil
}

func (c *cli) volumeShare(ctx context.Context, args []string) error {
	return c.volumeShareCmd(ctx, args, true)
}
func (c *cli) volumeUnshare(ctx context.Context, args []string) error {
	return c.volumeShareCmd(ctx, args, false)
}

func (c *cli) volumeShareCmd(ctx context.Context, args []string, share bool) error {
	name := "volume unshare"
	if share {
		name = "volume share"
	}
	f := c.newFlags(name, "NAME -user U [-ro]", "Let a user mount a volume of yours as OWNER/NAME (-ro: read-only), or take that away.", false)
	user := f.String("user", "", "the user")
	ro := false
	if share {
		f.BoolVar(&ro, "ro", false, "read-only")
	}
	pos, _, err := f.parse(args, 1)
	if err != nil {
		return err
	}
	if len(pos) != 1 || *user == "" {
		return f.usageErr("give the volume NAME and -user U")
	}
	client, err := f.client()
	if err != nil {
		return err
	}
	if share {
		_, err = client.ShareVolume(ctx, pos[0], *user, ro)
	} else {
		_, err = client.UnshareVolume(ctx, pos[0], *user)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "%s: done\n", name)
	return nil
}

func (c *cli) sshKeyAdd(ctx context.Context, args []string) error {
	f := c.newFlags("user ssh-key add", "FILE|-", "Add an SSH public key (an authorized_keys line, e.g. ~/.ssh/id_ed25519.pub; - reads stdin)\nthat your SFTP sessions accept.", false)
	pos, _, err := f.parse(args, 1)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return f.usageErr("give the public key FILE, or - for stdin")
	}
	var data []byte
	if pos[0] == "-" {
		data, err = io.ReadAll(io.LimitReader(os.Stdin, 64<<10))
	} else {
		data, err = os.ReadFile(pos[0])
	}
	if err != nil {
		return err
	}
	client, err := f.client()
	if err != nil {
		return err
	}
	keys, err := client.AddSSHKey(ctx, strings.TrimSpace(string(data)))
	if err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "you have %d SSH key(s)\n", len(keys.Keys))
	return nil
}

func (c *cli) sshKeyList(ctx context.Context, args []string) error {
	f := c.newFlags("user ssh-key list", "", "List your SSH public keys.", true)
	if err := f.parseNone(args); err != nil {
		return err
	}
	client, err := f.client()
	if err != nil {
		return err
	}
	keys, err := client.SSHKeys(ctx)
	if err != nil {
		return err
	}
	if f.json {
		return printJSON(c.stdout, keys)
	}
	for _, k := range keys.Keys {
		fmt.Fprintln(c.stdout, k)
	}
	return nil
}

// sftpSessionName is the name of the caller's SFTP session of a volume
// (NAME or OWNER/NAME), so that it is found and reused.
func sftpSessionName(volume string) string {
	return "sftp-" + strings.ReplaceAll(volume, "/", ".")
}

// sftpSession returns the caller's RUNNING SFTP session of volume,
// starting one when there is none, and waits until it runs.
func sftpSession(ctx context.Context, client *api.Client, volume string) (string, error) {
	name := sftpSessionName(volume)
	id := ""
	if d, err := client.GetSession(ctx, name); err == nil && !d.Session.Status.Terminal() && d.Session.Status != structs.SessionTerminating {
		id = d.Session.ID
	} else {
		d, err := client.CreateSession(ctx, &api.CreateSessionRequest{Name: name, Type: structs.SessionTypeSystem, SFTP: true, Volumes: []string{volume}})
		if err != nil {
			return "", err
		}
		id = d.Session.ID
	}
	deadline := time.Now().Add(5 * time.Minute)
	for {
		d, err := client.GetSession(ctx, id)
		if err != nil {
			return "", err
		}
		switch st := d.Session.Status; {
		case st == structs.SessionRunning:
			return id, nil
		case st.Terminal() || st == structs.SessionTerminating:
			return "", fmt.Errorf("sftp session %s ended: %s", id, d.Session.StatusInfo)
		case time.Now().After(deadline):
			return "", fmt.Errorf("sftp session %s is still %s after 5m: %s", id, st, d.Session.StatusInfo)
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// DialSFTP opens an SFTP client on an SFTP session's tunnel with signer,
// retrying while the kernel's server is not listening yet. The host key
// is not checked: the tunnel itself is the authenticated channel to the
// session (the server's key is new for every kernel).
func DialSFTP(ctx context.Context, client *api.Client, sessionID string, signer ssh.Signer) (*sftp.Client, error) {
	var conn net.Conn
	deadline := time.Now().Add(time.Minute)
	for {
		c, err := client.DialApp(ctx, sessionID, structs.SFTPPortName)
		if err == nil {
			conn = c
			break
		}
		if time.Now().After(deadline) {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	cfg := &ssh.ClientConfig{User: "corral", Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: ssh.InsecureIgnoreHostKey(), Timeout: 30 * time.Second}
	sc, chans, reqs, err := ssh.NewClientConn(conn, "sftp", cfg)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("ssh to the sftp session: %w (is your key added with corral user ssh-key add?)", err)
	}
	// Closing the SFTP client leaves the SSH connection: the command
	// ends with it (the tunnel closes with the process).
	return sftp.NewClient(ssh.NewClient(sc, chans, reqs))
}

func loadSigner(file string) (ssh.Signer, error) {
	if file == "" {
		home, _ := os.UserHomeDir()
		file = filepath.Join(home, ".ssh", "id_ed25519")
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("private key: %w (give one with -i)", err)
	}
	return ssh.ParsePrivateKey(b)
}

func (c *cli) volumeSFTP(ctx context.Context, args []string) error {
	f := c.newFlags("volume sftp", "NAME [-bind 127.0.0.1:PORT]", "Start (or reuse) an SFTP system session on a volume and serve it on a local\nport until interrupted: sftp -P PORT anyuser@127.0.0.1 with a key added by\ncorral user ssh-key add. The session ends by itself once idle.", false)
	bind := f.String("bind", "127.0.0.1:0", "local address to serve SFTP on")
	pos, _, err := f.parse(args, 1)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return f.usageErr("give the volume NAME")
	}
	client, err := f.client()
	if err != nil {
		return err
	}
	id, err := sftpSession(ctx, client, pos[0])
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *bind)
	if err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "SFTP session %s serves volume %s at %s\n", id, pos[0], ln.Addr())
	return client.ServeApp(ctx, ln, id, structs.SFTPPortName, func(err error) { fmt.Fprintf(c.stderr, "sftp tunnel: %v\n", err) })
}

// splitVolumePath splits NAME:/path (NAME may be OWNER/NAME); ok is false
// for a local path.
func splitVolumePath(s string) (volume, p string, ok bool) {
	v, p, ok := strings.Cut(s, ":")
	if !ok || v == "" || strings.HasPrefix(v, ".") || strings.HasPrefix(v, "/") {
		return "", "", false
	}
	return v, path.Clean("/" + p), true
}

func (c *cli) volumeCp(ctx context.Context, args []string) error {
	f := c.newFlags("volume cp", "SRC DST [-i KEY]", "Copy a file into a volume (LOCAL NAME:/path) or out of one (NAME:/path LOCAL)\nthrough an SFTP system session (started or reused; it ends by itself once idle).", false)
	keyFile := f.String("i", "", "SSH private key whose public key you added (default ~/.ssh/id_ed25519)")
	pos, _, err := f.parse(args, 2)
	if err != nil {
		return err
	}
	if len(pos) != 2 {
		return f.usageErr("give SRC and DST, one of them NAME:/path")
	}
	sv, sp, srcVol := splitVolumePath(pos[0])
	dv, dp, dstVol := splitVolumePath(pos[1])
	if srcVol == dstVol {
		return f.usageErr("exactly one of SRC and DST must be a volume path NAME:/path")
	}
	signer, err := loadSigner(*keyFile)
	if err != nil {
		return err
	}
	client, err := f.client()
	if err != nil {
		return err
	}
	volume := dv
	if srcVol {
		volume = sv
	}
	id, err := sftpSession(ctx, client, volume)
	if err != nil {
		return err
	}
	sc, err := DialSFTP(ctx, client, id, signer)
	if err != nil {
		return err
	}
	defer sc.Close()
	n, err := sftpCopy(sc, srcVol, pos[0], sp, pos[1], dp)
	if err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "copied %d bytes\n", n)
	return nil
}

// sftpCopy copies one file: from the volume (fromVol) at sp to local dst,
// or from local src to the volume at dp.
func sftpCopy(sc *sftp.Client, fromVol bool, src, sp, dst, dp string) (int64, error) {
	if fromVol {
		in, err := sc.Open(sp)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", src, err)
		}
		defer in.Close()
		out, err := os.Create(dst)
		if err != nil {
			return 0, err
		}
		n, err := io.Copy(out, in)
		return n, errors.Join(err, out.Close())
	}
	in, err := os.Open(src)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	if fi, err := sc.Stat(dp); err == nil && fi.IsDir() {
		dp = path.Join(dp, filepath.Base(src))
	}
	_ = sc.MkdirAll(path.Dir(dp))
	out, err := sc.Create(dp)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", dst, err)
	}
	n, err := out.ReadFrom(in)
	return n, errors.Join(err, out.Close())
}

func (c *cli) sshKey(ctx context.Context, args []string) error {
	return c.group(ctx, "user ssh-key", sshKeyCommands, args)
}
