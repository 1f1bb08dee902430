// Package kernelssh is what runs inside every kernel of a cluster session
// to wire it to its peers without anything from the image: an ssh server
// on golang.org/x/crypto/ssh that only the session's key may log in to,
// the matching client (usable as Open MPI's and MPICH's rsh agent), the
// start barrier that waits for every peer's server, and the launch file
// that the agent writes for the kernel.
//
// It is linked into cmd/corral-kernel, a small static binary that the
// agent places into each cluster kernel: keep it to the standard library,
// golang.org/x/crypto/ssh and golang.org/x/sys.
package kernelssh

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/crypto/ssh"
)

// LaunchEnv names the environment variable that holds the launch file's
// path in a kernel (the client finds its peers and key through it).
const LaunchEnv = "CORRAL_LAUNCH"

// DefaultLaunchPath is where container kernels find their launch file.
const DefaultLaunchPath = "/etc/corral/launch.json"

// Launch is the launch file: what one kernel's corral-kernel needs. The
// agent writes it as JSON next to the session's key; relative paths in it
// are relative to the file's directory, so that the same file serves at
// its host path (exec kernels) and at /etc/corral (container kernels).
type Launch struct {
	// Hostname and Rank are the kernel's own.
	Hostname string `json:"hostname"`
	Rank     int    `json:"rank"`
	// ListenAddr is the address the ssh server binds (0.0.0.0 on an
	// overlay, the agent's underlay address for host networking); SSHPort
	// is every peer's ssh port.
	ListenAddr string `json:"listen_addr"`
	SSHPort    int    `json:"ssh_port"`
	// Peers are every kernel of the session in rank order, this one
	// included.
	Peers []Peer `json:"peers"`
	// Barrier makes `run` wait for every peer's ssh server before it
	// starts its command.
	Barrier bool `json:"barrier,omitempty"`
	// KeyFile is the session's private key (OpenSSH format); it is both
	// the only key that may log in and every server's host key.
	KeyFile string `json:"key_file"`
	// AuthorizedKeysFile lists further public keys that may log in
	// (authorized_keys format); the session key always may.
	AuthorizedKeysFile string `json:"authorized_keys_file,omitempty"`

	// dir is the launch file's directory (relative paths).
	dir string
}

// Peer is one kernel of the session.
type Peer struct {
	Hostname string `json:"hostname"`
	Addr     string `json:"addr"`
	Rank     int    `json:"rank"`
	Slots    int    `json:"slots"`
	// SSHPort is the peer's ssh port when it is not the launch's (host-
	// networked kernels of one session that share an agent).
	SSHPort int `json:"ssh_port,omitempty"`
}

// LoadLaunch reads a launch file.
func LoadLaunch(path string) (*Launch, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("launch file: %w", err)
	}
	var l Launch
	if err := json.Unmarshal(b, &l); err != nil {
		return nil, fmt.Errorf("launch file %s: %w", path, err)
	}
	if l.SSHPort <= 0 || l.SSHPort > 65535 {
		return nil, fmt.Errorf("launch file %s: ssh port %d out of range", path, l.SSHPort)
	}
	if l.KeyFile == "" {
		return nil, fmt.Errorf("launch file %s: no key file", path)
	}
	l.dir = filepath.Dir(path)
	return &l, nil
}

// Path resolves p, relative to the launch file's directory.
func (l *Launch) Path(p string) string {
	if filepath.IsAbs(p) || l.dir == "" {
		return p
	}
	return filepath.Join(l.dir, p)
}

// Signer loads the session's key.
func (l *Launch) Signer() (ssh.Signer, error) {
	return LoadSigner(l.Path(l.KeyFile))
}

// AuthorizedKeys loads the launch's authorized_keys, none without one.
func (l *Launch) AuthorizedKeys() ([]ssh.PublicKey, error) {
	if l.AuthorizedKeysFile == "" {
		return nil, nil
	}
	b, err := os.ReadFile(l.Path(l.AuthorizedKeysFile))
	if err != nil {
		return nil, fmt.Errorf("authorized keys: %w", err)
	}
	var keys []ssh.PublicKey
	for len(bytes.TrimSpace(b)) > 0 {
		k, _, _, rest, err := ssh.ParseAuthorizedKey(b)
		if err != nil {
			return nil, fmt.Errorf("authorized keys %s: %w", l.Path(l.AuthorizedKeysFile), err)
		}
		keys = append(keys, k)
		b = rest
	}
	return keys, nil
}

// LoadSigner reads a private key file (OpenSSH or PEM format).
func LoadSigner(path string) (ssh.Signer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("session key: %w", err)
	}
	s, err := ssh.ParsePrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("session key %s: %w", path, err)
	}
	return s, nil
}

// PeerAddr returns the host:port at which host's ssh server listens:
// host is a peer's hostname or address, else dialled as it is. port 0
// means the peer's own SSH port, else the launch's.
func (l *Launch) PeerAddr(host string, port int) string {
	for _, p := range l.Peers {
		if p.Hostname == host {
			if port == 0 {
				port = p.SSHPort
			}
			if p.Addr != "" {
				host = p.Addr
			}
			break
		}
	}
	if port == 0 {
		port = l.SSHPort
	}
	return net.JoinHostPort(host, strconv.Itoa(port))
}

// ListenAddress is where this kernel's server listens.
func (l *Launch) ListenAddress() string {
	a := l.ListenAddr
	if a == "" {
		a = "0.0.0.0"
	}
	return net.JoinHostPort(a, strconv.Itoa(l.SSHPort))
}

// errNoLaunch says that the client found no launch file.
var errNoLaunch = errors.New("no launch file: set " + LaunchEnv + " (corral sets it in cluster kernels)")

// FindLaunch loads the launch file named by $CORRAL_LAUNCH, else the
// container default.
func FindLaunch() (*Launch, error) {
	p := os.Getenv(LaunchEnv)
	if p == "" {
		if _, err := os.Stat(DefaultLaunchPath); err != nil {
			return nil, errNoLaunch
		}
		p = DefaultLaunchPath
	}
	return LoadLaunch(p)
}
