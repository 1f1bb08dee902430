package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/crypto/ssh"

	"github.com/corral-dev/corral/internal/kernelssh"
	"github.com/corral-dev/corral/plugins/drivers"
	"github.com/corral-dev/corral/structs"
)

// Where a cluster kernel's files are: two directories in its task
// directory (which survives agent restarts, so recovered kernels keep
// them), bound read-only into container kernels at kernelEtcDir and
// kernelBinDir. Exec kernels get them at their host paths.
const (
	clusterEtcSubdir = "corral-etc"
	clusterBinSubdir = "corral-bin"
	kernelEtcDir     = "/etc/corral"
	kernelBinDir     = "/.corral/bin"
	// KernelHelperName is the helper binary (cmd/corral-kernel) that the
	// agent finds next to its own executable unless Config.KernelHelper
	// names it.
	KernelHelperName = "corral-kernel"
	// sessionKeyFile is the session's private key in the etc directory.
	sessionKeyFile = "ssh/id_ed25519"
)

// hostNetworked reports whether a kernel uses its agent's network (no
// overlay namespace): a cluster kernel launched with host networking, or
// any kernel whose options ask for it.
func hostNetworked(k *structs.Kernel) bool {
	return (k.Launch != nil && k.Launch.HostNetwork) || (k.Options != nil && k.Options.Network == structs.NetworkHost)
}

// prepareKernel completes a kernel's task config after its image is
// pulled: its runtime options and, for a kernel of a cluster session, its
// launch (prepareCluster).
func (r *kernelRunner) prepareKernel(cfg *drivers.TaskConfig) error {
	cfg.Options = r.kernel.Options.Copy()
	if r.kernel.Launch == nil {
		return nil
	}
	return r.prepareCluster(cfg)
}

// kernelHelper is the corral-kernel binary that cluster kernels get.
func (a *Agent) kernelHelper() (string, error) {
	if a.cfg.KernelHelper != "" {
		return a.cfg.KernelHelper, nil
	}
	exe, err := os.Executable()
	if err != nil {
		return "", err
	}
	return filepath.Join(filepath.Dir(exe), KernelHelperName), nil
}

// prepareCluster writes a cluster kernel's launch files, places the
// corral-kernel helper, and wraps the kernel's command in it (`run`, or
// `serve` for a kernel that runs no command of its own): the kernel's ssh
// server, start barrier and launcher variables come from corral, not
// from the image.
func (r *kernelRunner) prepareCluster(cfg *drivers.TaskConfig) error {
	k := r.kernel
	container := k.Image != ""
	etcHost := filepath.Join(cfg.TaskDir, clusterEtcSubdir)
	binHost := filepath.Join(cfg.TaskDir, clusterBinSubdir)
	etcDir, binDir := etcHost, binHost
	if container {
		etcDir, binDir = kernelEtcDir, kernelBinDir
	}
	files, err := clusterFiles(k, etcDir)
	if err != nil {
		return err
	}
	if err := writeClusterDir(etcHost, files); err != nil {
		return fmt.Errorf("writing the kernel's cluster files: %w", err)
	}
	helper, err := r.a.kernelHelper()
	if err != nil {
		return err
	}
	if err := placeHelper(helper, binHost); err != nil {
		return err
	}
	mountDst := func(host, inKernel string) string {
		if container {
			return inKernel
		}
		return host // exec kernels: the same path as on the host
	}
	cfg.Mounts = append(cfg.Mounts,
		drivers.Mount{Source: etcHost, Destination: mountDst(etcHost, kernelEtcDir), ReadOnly: true},
		drivers.Mount{Source: binHost, Destination: mountDst(binHost, kernelBinDir), ReadOnly: true})
	for key, v := range clusterEnv(k.Launch, etcDir, binDir) {
		if _, set := k.Env[key]; !set {
			cfg.Env[key] = v
		}
	}
	if hostNetworked(k) {
		// No overlay: the peers resolve to their agents' addresses.
		cfg.Hosts = map[string]string{}
		for _, p := range k.Launch.Peers {
			cfg.Hosts[p.Hostname] = p.Addr
		}
	}
	wrapCommand(cfg, k.Launch.Serve, container, filepath.Join(binDir, KernelHelperName), filepath.Join(etcDir, "launch.json"))
	return nil
}

// wrapCommand puts corral-kernel in front of the kernel's command: before
// the image's entrypoint for a container (the driver appends the command,
// else the image's cmd), before the command for an exec kernel. A serving
// kernel runs no command of its own.
func wrapCommand(cfg *drivers.TaskConfig, serve, container bool, helper, launch string) {
	mode := "run"
	if serve {
		mode = "serve"
	}
	wrap := []string{helper, mode, "-launch", launch}
	if !serve {
		wrap = append(wrap, "--")
	}
	if !container {
		if serve {
			cfg.Command = wrap
		} else {
			cfg.Command = append(wrap, cfg.Command...)
		}
		return
	}
	if cfg.ImageConfig == nil {
		cfg.ImageConfig = &drivers.ImageConfig{}
	}
	ic := *cfg.ImageConfig
	if serve {
		ic.Entrypoint, ic.Cmd = wrap, nil
		cfg.Command = nil
	} else {
		ic.Entrypoint = append(wrap, ic.Entrypoint...)
	}
	cfg.ImageConfig = &ic
}

// clusterEnv is the launcher environment of a cluster kernel whose files
// are in etcDir and helper in binDir (as the kernel sees them).
func clusterEnv(l *structs.ClusterLaunch, etcDir, binDir string) map[string]string {
	hosts := make([]string, 0, len(l.Peers))
	for _, p := range l.Peers {
		hosts = append(hosts, p.Hostname)
	}
	rank, n := strconv.Itoa(l.NodeRank), strconv.Itoa(l.NumNodes)
	port := strconv.Itoa(l.MasterPort)
	sshAgent := filepath.Join(binDir, "ssh")
	return map[string]string{
		"CORRAL_NODE_RANK":     rank,
		"CORRAL_NUM_NODES":     n,
		"CORRAL_MASTER_ADDR":   l.MasterAddr,
		"CORRAL_MASTER_PORT":   port,
		"CORRAL_CLUSTER_SIZE":  n,
		"CORRAL_CLUSTER_HOSTS": strings.Join(hosts, ","),
		"CORRAL_HOSTFILE":      filepath.Join(etcDir, "hostfile"),
		"CORRAL_MACHINEFILE":   filepath.Join(etcDir, "machinefile"),
		"CORRAL_SSH_CONFIG":    filepath.Join(etcDir, "ssh_config"),
		kernelssh.LaunchEnv:    filepath.Join(etcDir, "launch.json"),
		// torchrun, DeepSpeed, Horovod and friends.
		"MASTER_ADDR": l.MasterAddr,
		"MASTER_PORT": port,
		"WORLD_SIZE":  n,
		"NODE_RANK":   rank,
		// Open MPI and MPICH launch their daemons with corral's ssh.
		"OMPI_MCA_plm_rsh_agent":         sshAgent,
		"HYDRA_LAUNCHER":                 "ssh",
		"HYDRA_LAUNCHER_EXEC":            sshAgent,
		"OMPI_ALLOW_RUN_AS_ROOT":         "1",
		"OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
	}
}

// clusterFiles returns the files of a cluster kernel's etc directory, by
// path relative to it; etcDir is where the kernel sees that directory.
func clusterFiles(k *structs.Kernel, etcDir string) (map[string]string, error) {
	l := k.Launch
	if l.SSHPrivateKey == "" {
		return nil, errors.New("cluster kernel without a session key: the server gave its launch none")
	}
	signer, err := ssh.ParsePrivateKey([]byte(l.SSHPrivateKey))
	if err != nil {
		return nil, fmt.Errorf("the session's ssh key: %w", err)
	}
	pub := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey())))
	listen := "0.0.0.0"
	if hostNetworked(k) {
		listen = ""
		for _, p := range l.Peers {
			if p.Rank == l.NodeRank {
				listen = p.Addr
			}
		}
		if listen == "" && k.Network != nil {
			listen = k.Network.Underlay
		}
		if listen == "" {
			return nil, fmt.Errorf("host-networked kernel %s has no address among its peers", k.Hostname)
		}
	}
	launch := kernelssh.Launch{Hostname: k.Hostname, Rank: l.NodeRank, ListenAddr: listen, SSHPort: l.SSHPort,
		Barrier: l.Barrier, KeyFile: sessionKeyFile, AuthorizedKeysFile: "ssh/authorized_keys"}
	var hostfile, machinefile, knownHosts, sshConfig strings.Builder
	fmt.Fprintf(&sshConfig, "# corral: ssh -F %s HOST reaches the kernels of this session.\n", filepath.Join(etcDir, "ssh_config"))
	for _, p := range l.Peers {
		slots := max(p.Slots, 1)
		port := p.SSHPort
		if port == 0 {
			port = l.SSHPort
		}
		launch.Peers = append(launch.Peers, kernelssh.Peer{Hostname: p.Hostname, Addr: p.Addr, Rank: p.Rank, Slots: slots, SSHPort: p.SSHPort})
		fmt.Fprintf(&hostfile, "%s slots=%d\n", p.Hostname, slots)
		fmt.Fprintf(&machinefile, "%s:%d\n", p.Hostname, slots)
		names := []string{p.Hostname, fmt.Sprintf("[%s]:%d", p.Hostname, port)}
		fmt.Fprintf(&sshConfig, "Host %s\n", p.Hostname)
		if p.Addr != "" {
			names = append(names, p.Addr, fmt.Sprintf("[%s]:%d", p.Addr, port))
			fmt.Fprintf(&sshConfig, "    HostName %s\n", p.Addr)
		}
		fmt.Fprintf(&sshConfig, "    Port %d\n", port)
		fmt.Fprintf(&knownHosts, "%s %s\n", strings.Join(names, ","), pub)
	}
	fmt.Fprintf(&sshConfig, "Host *\n    Port %d\n    IdentityFile %s\n    IdentitiesOnly yes\n"+
		"    UserKnownHostsFile %s\n    GlobalKnownHostsFile /dev/null\n    StrictHostKeyChecking yes\n    BatchMode yes\n    LogLevel ERROR\n",
		l.SSHPort, filepath.Join(etcDir, sessionKeyFile), filepath.Join(etcDir, "ssh/known_hosts"))
	authorized := pub + "\n"
	for _, a := range l.AuthorizedKeys {
		if a = strings.TrimSpace(a); a != "" && a != pub {
			authorized += a + "\n"
		}
	}
	lj, err := json.MarshalIndent(launch, "", "  ")
	if err != nil {
		return nil, err
	}
	key := l.SSHPrivateKey
	if !strings.HasSuffix(key, "\n") {
		key += "\n"
	}
	return map[string]string{
		"launch.json":           string(lj) + "\n",
		"hostfile":              hostfile.String(),
		"machinefile":           machinefile.String(),
		"ssh_config":            sshConfig.String(),
		"ssh/known_hosts":       knownHosts.String(),
		"ssh/authorized_keys":   authorized,
		sessionKeyFile:          key,
		sessionKeyFile + ".pub": pub + "\n",
	}, nil
}

// writeClusterDir replaces dir with files. Every file is 0644, the
// session key included: the agent cannot know which uid the kernel's
// user has on the host (the driver picks it, in a user namespace of its
// own for runc), and the key must be readable by it. On the host only
// root reaches it (the agent's data dir is 0700); in the kernel only the
// session's own processes see it.
func writeClusterDir(dir string, files map[string]string) error {
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// placeHelper puts corral-kernel into dir (a hard link, else a copy) with
// a link named ssh to it.
func placeHelper(helper, dir string) error {
	fi, err := os.Stat(helper)
	if err != nil || !fi.Mode().IsRegular() || fi.Mode()&0o111 == 0 {
		return fmt.Errorf("cluster kernels need the %s helper at %s (make build puts it next to corral; the agent's -kernel-helper names another): not an executable file", KernelHelperName, helper)
	}
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	dst := filepath.Join(dir, KernelHelperName)
	if err := os.Link(helper, dst); err != nil {
		if err := copyFile(helper, dst); err != nil {
			return fmt.Errorf("placing %s for the kernel: %w", KernelHelperName, err)
		}
	}
	return os.Symlink(KernelHelperName, filepath.Join(dir, "ssh"))
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
