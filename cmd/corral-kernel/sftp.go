package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
)

// sftpMain serves SFTP on one directory (a volume) to the holders of the
// authorized keys: the kernel of an SFTP system session (corral volume
// sftp). Only the "sftp" subsystem is served: no shell, no exec, no
// forwarding. Every path resolves inside the root ("/" is the root
// itself; os.Root keeps "..", and symlinks, from leading out).
func sftpMain(args []string) int {
	fs := flag.NewFlagSet("sftp", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:2222", "address to listen on")
	root := fs.String("root", "", "directory to serve")
	hostKeyFile := fs.String("host-key", "", "the server's private key (PEM)")
	authFile := fs.String("authorized-keys", "", "authorized_keys file of the keys allowed in")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *root == "" || *hostKeyFile == "" || *authFile == "" {
		fmt.Fprintln(os.Stderr, "corral-kernel sftp: -root, -host-key and -authorized-keys are required")
		return 2
	}
	cfg, err := sftpServerConfig(*hostKeyFile, *authFile)
	if err != nil {
		fmt.Fprintf(os.Stderr, "corral-kernel sftp: %v\n", err)
		return 1
	}
	rt, err := os.OpenRoot(*root)
	if err != nil {
		fmt.Fprintf(os.Stderr, "corral-kernel sftp: %v\n", err)
		return 1
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintf(os.Stderr, "corral-kernel sftp: %v\n", err)
		return 1
	}
	fmt.Printf("serving sftp on %s for %s (uid %d)\n", ln.Addr(), *root, os.Getuid())
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() { <-sig; ln.Close() }()
	for {
		c, err := ln.Accept()
		if err != nil {
			return 0
		}
		go serveSFTPConn(c, cfg, rt)
	}
}

// sftpServerConfig accepts the public keys of authFile only.
func sftpServerConfig(hostKeyFile, authFile string) (*ssh.ServerConfig, error) {
	pemBytes, err := os.ReadFile(hostKeyFile)
	if err != nil {
		return nil, err
	}
	signer, err := ssh.ParsePrivateKey(pemBytes)
	if err != nil {
		return nil, fmt.Errorf("host key: %w", err)
	}
	data, err := os.ReadFile(authFile)
	if err != nil {
		return nil, err
	}
	var allowed [][]byte
	for len(bytes.TrimSpace(data)) > 0 {
		pk, _, _, rest, err := ssh.ParseAuthorizedKey(data)
		if err != nil {
			break // only blank lines or comments left
		}
		allowed = append(allowed, pk.Marshal())
		data = rest
	}
	if len(allowed) == 0 {
		return nil, fmt.Errorf("%s holds no public key", authFile)
	}
	cfg := &ssh.ServerConfig{PublicKeyCallback: func(_ ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
		m := key.Marshal()
		for _, a := range allowed {
			if bytes.Equal(a, m) {
				return &ssh.Permissions{}, nil
			}
		}
		return nil, fmt.Errorf("unknown public key")
	}}
	cfg.AddHostKey(signer)
	return cfg, nil
}

// serveSFTPConn serves one client connection.
func serveSFTPConn(c net.Conn, cfg *ssh.ServerConfig, root *os.Root) {
	defer c.Close()
	_, chans, reqs, err := ssh.NewServerConn(c, cfg)
	if err != nil {
		return
	}
	go ssh.DiscardRequests(reqs)
	for nc := range chans {
		if nc.ChannelType() != "session" {
			_ = nc.Reject(ssh.UnknownChannelType, "only sessions with the sftp subsystem")
			continue
		}
		ch, creqs, err := nc.Accept()
		if err != nil {
			continue
		}
		go func() {
			defer ch.Close()
			for req := range creqs {
				ok := req.Type == "subsystem" && len(req.Payload) >= 4 && string(req.Payload[4:]) == "sftp"
				_ = req.Reply(ok, nil)
				if !ok {
					continue
				}
				srv := sftp.NewRequestServer(ch, newRootHandlers(root))
				if err := srv.Serve(); err != nil && err != io.EOF {
					fmt.Fprintf(os.Stderr, "sftp: %v\n", err)
				}
				_ = srv.Close()
				return
			}
		}()
	}
}
