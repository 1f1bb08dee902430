package e2e

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"

	"github.com/corral-dev/corral/api"
	execdriver "github.com/corral-dev/corral/drivers/exec"
	"github.com/corral-dev/corral/internal/btrfsioc"
	"github.com/corral-dev/corral/internal/btrfstest"
	"github.com/corral-dev/corral/structs"
)

// volWait bounds every wait of the volume tests: the machine is shared.
const volWait = 2 * time.Minute

// volDev is a `corral dev` with its default local volume backend
// (DATA_DIR/volumes) and an admin client.
type volDev struct {
	addr, dir string
	admin     *api.Client
}

func startVolDev(t *testing.T, extra ...string) *volDev {
	t.Helper()
	dir := t.TempDir()
	reapKernels(t, filepath.Join(dir, "agent"))
	http := freePort(t)
	start(t, "dev", append([]string{"dev", "-data-dir", dir, "-http", http, "-rpc", freePort(t), "-serf", freePort(t),
		"-agent-serf", freePort(t), "-fast-gossip"}, extra...)...)
	addr := "http://" + http
	eventually(t, volWait, "dev writes its admin token", func() error {
		tok, ok := adminTokenIn(filepath.Join(dir, "server"))
		if !ok {
			return fmt.Errorf("no admin token yet")
		}
		apiTokens.Store(addr, tok)
		return nil
	})
	agentAlive(t, addr)
	tok, _ := apiTokens.Load(addr)
	c, err := api.NewClient(addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetToken(tok.(string))
	return &volDev{addr: addr, dir: dir, admin: c}
}

// user makes a user with a key and returns its client and token.
func (d *volDev) user(t *testing.T, name string) (*api.Client, string) {
	t.Helper()
	ctx := context.Background()
	if _, err := d.admin.CreateUser(ctx, &api.CreateUserRequest{Name: name}); err != nil {
		t.Fatal(err)
	}
	k, err := d.admin.CreateKey(ctx, &api.CreateKeyRequest{User: name})
	if err != nil {
		t.Fatal(err)
	}
	c, err := api.NewClient(d.addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetToken(k.Token)
	return c, k.Token
}

// runBatch creates a batch exec session with volumes and waits until it
// ends; it returns the detail and main1's stdout.
func runBatch(t *testing.T, c *api.Client, volumes []string, script string) (*api.SessionDetail, string) {
	t.Helper()
	return runSession(t, c, &api.CreateSessionRequest{Command: []string{"sh", "-c", script}, Volumes: volumes})
}

// runSession creates the session of req and waits until it ends; it
// returns the detail and its output (stdout, then stderr).
func runSession(t *testing.T, c *api.Client, req *api.CreateSessionRequest) (*api.SessionDetail, string) {
	t.Helper()
	ctx := context.Background()
	d, err := c.CreateSession(ctx, req)
	if err != nil {
		t.Fatalf("create %v with volumes %v: %v", req.Command, req.Volumes, err)
	}
	id := d.Session.ID
	eventually(t, volWait, "session "+id+" ends", func() error {
		if d, err = c.GetSession(ctx, id); err != nil {
			return err
		}
		if !d.Session.Status.Terminal() {
			return fmt.Errorf("session is %s", d.Session.Status)
		}
		return nil
	})
	logs, err := c.SessionLogs(ctx, id, "")
	if err != nil {
		t.Fatal(err)
	}
	return d, string(logs.Stdout) + string(logs.Stderr)
}

func TestVolumes(t *testing.T) {
	d := startVolDev(t)
	ctx := context.Background()
	alice, _ := d.user(t, "alice")
	bob, _ := d.user(t, "bob")

	v, err := alice.CreateVolume(ctx, &api.CreateVolumeRequest{Name: "data", Quota: "1G"})
	if err != nil {
		t.Fatal(err)
	}
	if v.Backend != "local" || v.Owner != "alice" || v.QuotaBytes != 1<<30 {
		t.Fatalf("volume = %+v, want alice's on backend local with a 1G quota", v)
	}
	if _, err := alice.CreateVolume(ctx, &api.CreateVolumeRequest{Name: "data"}); !isStatus(err, 409) {
		t.Fatalf("second create of data: %v, want 409", err)
	}
	if _, err := alice.CreateVolume(ctx, &api.CreateVolumeRequest{Name: "x", Backend: "nfs"}); !isStatus(err, 400) {
		t.Fatalf("create on a backend no agent reaches: %v, want 400", err)
	}
	if _, err := alice.CreateVolume(ctx, &api.CreateVolumeRequest{Name: "x", Quota: "lots"}); !isStatus(err, 400) || !strings.Contains(err.Error(), `quota "lots"`) {
		t.Fatalf("create with quota lots: %v, want 400 naming the quota", err)
	}
	if r := cli(t, d.addr, "volume", "create", "y", "-quota", "lots"); r.code == 0 || !strings.Contains(r.stderr, `quota "lots"`) || strings.Count(strings.TrimSpace(r.stderr), "\n") > 0 {
		t.Fatalf("corral volume create -quota lots: exit %d, stderr %q; want a failure in one line naming the quota", r.code, r.stderr)
	}

	// A batch session writes; the files belong to the exec kernels' uid.
	s1, out := runBatch(t, alice, []string{"data:/mnt/data"}, "echo hello > /mnt/data/greeting && mkdir -p /mnt/data/sub && id -u")
	if s1.Session.Result != structs.ResultSuccess {
		t.Fatalf("writer session: %s %s (%s), output %q", s1.Session.Status, s1.Session.Result, s1.Session.StatusInfo, out)
	}
	host := filepath.Join(d.dir, "volumes", "alice", "data")
	b, err := os.ReadFile(filepath.Join(host, "greeting"))
	if err != nil || string(b) != "hello\n" {
		t.Fatalf("the volume on the host holds %q, %v; want hello", b, err)
	}
	uid, _, err := execdriver.TaskUserIDs(execdriver.DefaultUser)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{host, filepath.Join(host, "greeting")} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Sys().(*syscall.Stat_t).Uid; int(got) != uid {
			t.Errorf("%s belongs to uid %d, want the kernels' uid %d", p, got, uid)
		}
	}
	if strings.TrimSpace(out) != fmt.Sprint(uid) {
		t.Errorf("the kernel ran as uid %q, want %d", strings.TrimSpace(out), uid)
	}

	// A second session reads it, read-only; writing there fails.
	s2, out := runBatch(t, alice, []string{"data:/in:ro"}, "cat /in/greeting")
	if s2.Session.Result != structs.ResultSuccess || !strings.Contains(out, "hello") {
		t.Fatalf("reader session: %s (%s), output %q", s2.Session.Result, s2.Session.StatusInfo, out)
	}
	s3, out := runBatch(t, alice, []string{"data:/in:ro"}, "echo x > /in/new")
	if s3.Session.Result != structs.ResultFailure || !strings.Contains(out, "Read-only file system") {
		t.Fatalf("a write to a read-only mount: %s, output %q; want FAILURE with Read-only file system", s3.Session.Result, out)
	}
	if _, err := os.Stat(filepath.Join(host, "new")); !os.IsNotExist(err) {
		t.Fatalf("the read-only session wrote into the volume: %v", err)
	}

	// Another user's volume is not mountable until shared; a read-only
	// share is mountable read-only only.
	if _, err := bob.CreateSession(ctx, &api.CreateSessionRequest{Command: []string{"true"}, Volumes: []string{"alice/data:/d"}}); !isStatus(err, 404) {
		t.Fatalf("bob mounting alice/data unshared: %v, want 404", err)
	}
	if _, err := bob.CreateSession(ctx, &api.CreateSessionRequest{Command: []string{"true"}, Volumes: []string{"data:/d"}}); !isStatus(err, 404) {
		t.Fatalf("bob mounting a volume data he does not have: %v, want 404", err)
	}
	if _, err := alice.ShareVolume(ctx, "data", "bob", true); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.CreateSession(ctx, &api.CreateSessionRequest{Command: []string{"true"}, Volumes: []string{"alice/data:/d"}}); !isStatus(err, 403) {
		t.Fatalf("bob mounting a read-only share read-write: %v, want 403", err)
	}
	s4, out := runBatch(t, bob, []string{"alice/data:/d:ro"}, "cat /d/greeting")
	if s4.Session.Result != structs.ResultSuccess || !strings.Contains(out, "hello") {
		t.Fatalf("bob reading the shared volume: %s (%s), output %q", s4.Session.Result, s4.Session.StatusInfo, out)
	}
	if _, err := alice.UnshareVolume(ctx, "data", "bob"); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.CreateSession(ctx, &api.CreateSessionRequest{Command: []string{"true"}, Volumes: []string{"alice/data:/d:ro"}}); !isStatus(err, 404) {
		t.Fatalf("bob mounting alice/data after unshare: %v, want 404", err)
	}

	// list shows usage; the CLI too.
	l, err := alice.Volumes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Volumes) != 1 || l.Volumes[0].UsageBytes != 6 || l.Volumes[0].UsageFiles != 2 || l.Volumes[0].UsageError != "" {
		t.Fatalf("volume list = %+v, want data with 6 bytes in 2 entries", l.Volumes[0])
	}
	if q := l.Volumes[0].QuotaEnforcement; q != "measured" && !(q == "enforced" && btrfsioc.OnBtrfs(host)) {
		t.Fatalf("quota of a volume on %s: %q, want measured (not btrfs)", host, q)
	}
	if bl, err := bob.Volumes(ctx); err != nil || len(bl.Volumes) != 0 {
		t.Fatalf("bob's volume list = %+v, %v; want none", bl, err)
	}
	r := mustCLI(t, d.addr, 0, "volume", "list")
	if !strings.Contains(r.stdout, "data") || !strings.Contains(r.stdout, "1.0G") && !strings.Contains(r.stdout, "1G") {
		t.Logf("volume list (admin):\n%s", r.stdout)
	}

	// delete is refused while a live session mounts it.
	live, err := alice.CreateSession(ctx, &api.CreateSessionRequest{Type: structs.SessionTypeInteractive, Command: []string{"sleep", "600"}, Volumes: []string{"data:/d"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := alice.DeleteVolume(ctx, "data"); !isStatus(err, 409) {
		t.Fatalf("delete while session %s mounts it: %v, want 409", live.Session.ID, err)
	}
	if _, err := alice.DestroySession(ctx, live.Session.ID); err != nil {
		t.Fatal(err)
	}
	eventually(t, volWait, "the mounting session ends", func() error {
		g, err := alice.GetSession(ctx, live.Session.ID)
		if err != nil {
			return err
		}
		if !g.Session.Status.Terminal() {
			return fmt.Errorf("it is %s", g.Session.Status)
		}
		return nil
	})
	if err := alice.DeleteVolume(ctx, "data"); err != nil {
		t.Fatalf("delete once no session mounts it: %v", err)
	}
}

// TestVolumeQuotaBtrfs: on a backend on btrfs, a volume's quota is
// enforced: a kernel writing past it gets "Disk quota exceeded", another
// volume without a quota on the same backend does not, and volume list
// says "enforced".
func TestVolumeQuotaBtrfs(t *testing.T) {
	mnt := btrfstest.Mount(t, 256<<20)
	args := []string{"-volume-root", "local=" + filepath.Join(mnt, "volumes")}
	withRunc := runcUnavailable() == ""
	var ref string
	if withRunc {
		ref = startRegistry(t, busyboxImage(t), "corral/busybox:1")
		args = append(args, "-allow-registry", strings.SplitN(ref, "/", 2)[0])
	}
	d := startVolDev(t, args...)
	ctx := context.Background()
	alice, _ := d.user(t, "alice")
	for _, r := range []*api.CreateVolumeRequest{{Name: "small", Quota: "8M"}, {Name: "big"}, {Name: "runc", Quota: "8M"}} {
		if _, err := alice.CreateVolume(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	l, err := alice.Volumes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range l.Volumes {
		want := map[string]string{"small": "enforced", "big": "", "runc": "enforced"}[v.Name]
		if v.QuotaEnforcement != want || v.UsageError != "" {
			t.Fatalf("volume %s before its first mount: %+v, want quota %q", v.Name, v, want)
		}
	}

	// A subvolume or snapshot made inside the volume would have a qgroup
	// of its own, without the limit: exec kernels may not make them.
	s, out := runBatch(t, alice, []string{"small:/mnt/v"}, "btrfs subvolume create /mnt/v/escape 2>&1; btrfs subvolume snapshot /mnt/v /mnt/v/snap 2>&1; ls /mnt/v")
	if strings.Count(out, "Operation not permitted") != 2 || strings.Contains(out, "escape") && !strings.Contains(out, "/mnt/v/escape") {
		t.Fatalf("making subvolumes inside a volume with a quota: output %q; want both refused", out)
	}
	if _, err := os.Stat(filepath.Join(mnt, "volumes", "alice", "small", "escape")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the kernel made a subvolume in its volume (stat: %v)", err)
	}
	write := "dd if=/dev/zero of=/mnt/v/blob bs=1M count=16 conv=fsync 2>&1; echo rc=$?"
	s, out = runBatch(t, alice, []string{"small:/mnt/v"}, write)
	if !strings.Contains(out, "Disk quota exceeded") || strings.Contains(out, "rc=0") {
		t.Fatalf("writing 16 MiB into an 8 MiB volume: %s %s, output %q; want Disk quota exceeded", s.Session.Status, s.Session.Result, out)
	}
	s, out = runBatch(t, alice, []string{"big:/mnt/v"}, write)
	if !strings.Contains(out, "rc=0") {
		t.Fatalf("writing 16 MiB into a volume without a quota: %s %s, output %q", s.Session.Status, s.Session.Result, out)
	}

	if withRunc {
		// A runc kernel (user namespace, idmapped mount of the subvolume)
		// is held to the quota too, and writes as the exec uid.
		_, out := runSession(t, alice, &api.CreateSessionRequest{Driver: "runc", Image: ref,
			Command: []string{"sh", "-c", write}, Volumes: []string{"runc:/mnt/v"}})
		if !strings.Contains(out, "Disk quota exceeded") || strings.Contains(out, "rc=0") {
			t.Fatalf("runc kernel writing 16 MiB into an 8 MiB volume: output %q; want Disk quota exceeded", out)
		}
		fi, err := os.Stat(filepath.Join(mnt, "volumes", "alice", "runc", "blob"))
		if err != nil {
			t.Fatal(err)
		}
		uid, _, _ := execdriver.TaskUserIDs(execdriver.DefaultUser)
		if got := fi.Sys().(*syscall.Stat_t).Uid; int(got) != uid {
			t.Errorf("the runc kernel's file belongs to host uid %d, want %d", got, uid)
		}
	} else {
		t.Logf("runc part skipped: %s", runcUnavailable())
	}

	if l, err = alice.Volumes(ctx); err != nil {
		t.Fatal(err)
	}
	for _, v := range l.Volumes {
		switch {
		case v.Name == "small" && (v.QuotaEnforcement != "enforced" || v.UsageBytes > 8<<20 || v.UsageBytes == 0):
			t.Fatalf("small after the write: %+v, want enforced with at most 8 MiB", v)
		case v.Name == "big" && v.UsageBytes != 16<<20:
			t.Fatalf("big after the write: %+v, want 16 MiB", v)
		}
	}
	r := mustCLI(t, d.addr, 0, "volume", "list")
	if !strings.Contains(r.stdout, "8MiB enforced") {
		t.Fatalf("volume list does not say the quota is enforced:\n%s", r.stdout)
	}
}

// newKeyPair returns an ed25519 signer, its authorized_keys line and the
// private key in OpenSSH PEM.
func newKeyPair(t *testing.T) (ssh.Signer, string, []byte) {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	return signer, strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey()))) + " test", pem.EncodeToMemory(block)
}

// sftpConn is an SFTP client on an SSH connection through a tunnel.
type sftpConn struct {
	*sftp.Client
	ssh *ssh.Client
}

// Close closes the SFTP client, the SSH connection and the tunnel.
func (c *sftpConn) Close() error {
	c.Client.Close()
	return c.ssh.Close()
}

// dialSFTP opens an SFTP client through the session's app tunnel.
func dialSFTP(ctx context.Context, c *api.Client, id string, signer ssh.Signer) (*sftpConn, error) {
	conn, err := c.DialApp(ctx, id, structs.SFTPPortName)
	if err != nil {
		return nil, err
	}
	sc, chans, reqs, err := ssh.NewClientConn(conn, "sftp", &ssh.ClientConfig{User: "alice", Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: ssh.InsecureIgnoreHostKey(), Timeout: 30 * time.Second})
	if err != nil {
		conn.Close()
		return nil, err
	}
	client := ssh.NewClient(sc, chans, reqs)
	sf, err := sftp.NewClient(client)
	if err != nil {
		client.Close()
		return nil, err
	}
	return &sftpConn{Client: sf, ssh: client}, nil
}

func TestVolumeSFTP(t *testing.T) {
	d := startVolDev(t, "-sftp-idle-timeout", "20s")
	ctx := context.Background()
	alice, aliceTok := d.user(t, "alice")
	if _, err := alice.CreateVolume(ctx, &api.CreateVolumeRequest{Name: "data"}); err != nil {
		t.Fatal(err)
	}
	signer, pub, privPEM := newKeyPair(t)
	if _, err := alice.CreateSession(ctx, &api.CreateSessionRequest{SFTP: true, Volumes: []string{"data"}}); !isStatus(err, 400) {
		t.Fatalf("sftp session without an SSH key: %v, want 400", err)
	}
	if _, err := alice.AddSSHKey(ctx, "not a key"); !isStatus(err, 400) {
		t.Fatalf("adding a bad key: %v, want 400", err)
	}
	if _, err := alice.AddSSHKey(ctx, pub); err != nil {
		t.Fatal(err)
	}
	sd, err := alice.CreateSession(ctx, &api.CreateSessionRequest{SFTP: true, Volumes: []string{"data"}})
	if err != nil {
		t.Fatal(err)
	}
	id := sd.Session.ID
	var sc *sftpConn
	eventually(t, volWait, "the sftp session serves through its tunnel", func() error {
		sc, err = dialSFTP(ctx, alice, id, signer)
		return err
	})
	defer sc.Close()

	// Upload and download 64 MiB; compare with a direct local copy.
	const size = 64 << 20
	src := filepath.Join(t.TempDir(), "blob")
	data := make([]byte, size)
	_, _ = rand.Read(data)
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256(data)
	t0 := time.Now()
	in, _ := os.Open(src)
	out, err := sc.Create("/blob")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := out.ReadFrom(in); err != nil {
		t.Fatal(err)
	}
	out.Close()
	in.Close()
	up := time.Since(t0)
	t0 = time.Now()
	rf, err := sc.Open("/blob")
	if err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	if _, err := rf.WriteTo(&got); err != nil {
		t.Fatal(err)
	}
	rf.Close()
	down := time.Since(t0)
	if sha256.Sum256(got.Bytes()) != want {
		t.Fatalf("downloaded %d bytes differ from the upload", got.Len())
	}
	host := filepath.Join(d.dir, "volumes", "alice", "data", "blob")
	fi, err := os.Stat(host)
	if err != nil || fi.Size() != size {
		t.Fatalf("the upload on the host: %v, %v", fi, err)
	}
	uid, _, _ := execdriver.TaskUserIDs(execdriver.DefaultUser)
	if got := fi.Sys().(*syscall.Stat_t).Uid; int(got) != uid {
		t.Errorf("the uploaded file belongs to uid %d, want the kernels' uid %d (never root)", got, uid)
	}
	t0 = time.Now()
	copyLocal(t, src, filepath.Join(t.TempDir(), "copy"))
	local := time.Since(t0)
	mib := float64(size) / (1 << 20)
	t.Logf("FIGURE sftp_tunnel_upload_MiBps=%.1f sftp_tunnel_download_MiBps=%.1f local_copy_MiBps=%.1f upload_ratio=%.3f download_ratio=%.3f size_MiB=%d",
		mib/up.Seconds(), mib/down.Seconds(), mib/local.Seconds(), local.Seconds()/up.Seconds(), local.Seconds()/down.Seconds(), size>>20)

	// A key that was not added is refused.
	other, _, _ := newKeyPair(t)
	if c2, err := dialSFTP(ctx, alice, id, other); err == nil {
		c2.Close()
		t.Fatal("an unknown key got in")
	}

	// corral volume cp both ways reuses the session.
	home := t.TempDir()
	keyFile := filepath.Join(home, "id")
	if err := os.WriteFile(keyFile, privPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	small := filepath.Join(home, "notes.txt")
	if err := os.WriteFile(small, []byte("field notes\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cp := func(args ...string) result {
		return mustCLI(t, d.addr, 0, append([]string{"volume", "cp", "-token", aliceTok, "-i", keyFile}, args...)...)
	}
	cp(small, "data:/docs/notes.txt")
	if b, err := os.ReadFile(filepath.Join(d.dir, "volumes", "alice", "data", "docs", "notes.txt")); err != nil || string(b) != "field notes\n" {
		t.Fatalf("volume cp up: %q, %v", b, err)
	}
	back := filepath.Join(home, "back.txt")
	cp("data:/docs/notes.txt", back)
	if b, err := os.ReadFile(back); err != nil || string(b) != "field notes\n" {
		t.Fatalf("volume cp down: %q, %v", b, err)
	}
	// The second cp reused the session the first one started.
	if g, err := alice.GetSession(ctx, "sftp-data"); err != nil || g.Session.Status != structs.SessionRunning {
		t.Fatalf("the session of volume cp: %v, %v", g, err)
	}
	if r := cli(t, d.addr, "volume", "cp", "-token", aliceTok, "-i", keyFile, small, back); r.code == 0 || !strings.Contains(r.stderr, "NAME:/path") {
		t.Fatalf("volume cp with no volume side: exit %d, %s", r.code, r.stderr)
	}

	// Idle SFTP sessions end by themselves.
	sc.Close()
	eventually(t, volWait, "the idle sftp session ends", func() error {
		g, err := alice.GetSession(ctx, id)
		if err != nil {
			return err
		}
		if !g.Session.Status.Terminal() {
			return fmt.Errorf("it is %s", g.Session.Status)
		}
		if !strings.Contains(g.Session.StatusInfo, "idle") {
			return fmt.Errorf("it ended for another reason: %s", g.Session.StatusInfo)
		}
		return nil
	})
}

func copyLocal(t *testing.T, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Sync(); err != nil {
		t.Fatal(err)
	}
	out.Close()
}

// TestVolumeMountFigure measures what mounting volumes adds to a
// kernel's start: PREPARING to RUNNING of exec kernels with 0 and 3
// volumes (FIGURE line; no assertion on time).
func TestVolumeMountFigure(t *testing.T) {
	d := startVolDev(t)
	ctx := context.Background()
	alice, _ := d.user(t, "alice")
	var vols []string
	for i := range 3 {
		name := fmt.Sprintf("v%d", i)
		if _, err := alice.CreateVolume(ctx, &api.CreateVolumeRequest{Name: name}); err != nil {
			t.Fatal(err)
		}
		vols = append(vols, fmt.Sprintf("%s:/mnt/%s", name, name))
	}
	const runs = 5
	med := map[int]time.Duration{}
	for _, n := range []int{0, 3} {
		var ds []time.Duration
		for range runs {
			s, out := runBatch(t, alice, vols[:n], "ls /mnt >/dev/null 2>&1; true")
			if s.Session.Result != structs.ResultSuccess {
				t.Fatalf("session with %d volumes: %s (%s) %q", n, s.Session.Result, s.Session.StatusInfo, out)
			}
			k := s.Kernels[0]
			var prep, run time.Time
			for _, h := range k.History {
				switch h.Status {
				case string(structs.KernelPreparing):
					if prep.IsZero() {
						prep = h.Time
					}
				case string(structs.KernelRunning):
					run = h.Time
				}
			}
			if prep.IsZero() || run.IsZero() {
				t.Fatalf("kernel history lacks PREPARING or RUNNING: %+v", k.History)
			}
			ds = append(ds, run.Sub(prep))
		}
		sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
		med[n] = ds[len(ds)/2]
	}
	t.Logf("FIGURE volume_mount_start_ms_0=%.1f volume_mount_start_ms_3=%.1f added_ms=%.1f runs=%d (median PREPARING->RUNNING of exec kernels)",
		float64(med[0].Microseconds())/1000, float64(med[3].Microseconds())/1000, float64((med[3]-med[0]).Microseconds())/1000, runs)
}

// TestVolumesRunc: a container kernel (runc, in a user namespace where
// the host allows) reads and writes a volume that an exec kernel wrote;
// its files belong to the same host uid; read-only is honoured.
func TestVolumesRunc(t *testing.T) {
	if why := runcUnavailable(); why != "" {
		t.Skip(why)
	}
	ref := startRegistry(t, busyboxImage(t), "corral/busybox:1")
	d := startVolDev(t, "-allow-registry", strings.SplitN(ref, "/", 2)[0])
	ctx := context.Background()
	alice, _ := d.user(t, "alice")
	if _, err := alice.CreateVolume(ctx, &api.CreateVolumeRequest{Name: "data"}); err != nil {
		t.Fatal(err)
	}
	if s, out := runBatch(t, alice, []string{"data:/mnt/data"}, "echo hello > /mnt/data/greeting"); s.Session.Result != structs.ResultSuccess {
		t.Fatalf("exec writer: %s (%s) %q", s.Session.Result, s.Session.StatusInfo, out)
	}
	runc := func(vol, script string) (*api.SessionDetail, string) {
		t.Helper()
		return runSession(t, alice, &api.CreateSessionRequest{Driver: "runc", Image: ref, Command: []string{"sh", "-c", script}, Volumes: []string{vol}})
	}
	s, out := runc("data:/data", "cat /data/greeting && echo from-runc > /data/runc.txt && ls -ln /data/runc.txt")
	if s.Session.Result != structs.ResultSuccess || !strings.Contains(out, "hello") {
		t.Fatalf("runc kernel on the volume: %s (%s) %q", s.Session.Result, s.Session.StatusInfo, out)
	}
	host := filepath.Join(d.dir, "volumes", "alice", "data", "runc.txt")
	fi, err := os.Stat(host)
	if err != nil {
		t.Fatal(err)
	}
	uid, _, _ := execdriver.TaskUserIDs(execdriver.DefaultUser)
	if got := fi.Sys().(*syscall.Stat_t).Uid; int(got) != uid {
		t.Errorf("the runc kernel's file belongs to host uid %d, want %d, as exec kernels' files", got, uid)
	}
	s, out = runc("data:/data:ro", "echo x > /data/ro.txt")
	if s.Session.Result != structs.ResultFailure || !strings.Contains(out, "Read-only") {
		t.Fatalf("runc write to a read-only volume: %s %q", s.Session.Result, out)
	}
}
