// Package guestproto is the contract between the vm driver on the host and
// its guest agent (cmd/corral-vm-guest), PID 1 of every VM: the task file
// the driver puts into the guest's initramfs, the names of the virtio-serial
// ports, the exit record, and the frames of the control channel that
// carries `session exec` and signals. It imports nothing but the standard
// library, so that the guest agent stays small.
package guestproto

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Version is the protocol version the guest agent speaks; it runs tasks
// of versions 1 to Version and refuses others. The driver writes the
// lowest version that a task needs (TaskVersion), so that a guest
// initramfs built before a change still runs the tasks it can.
// Version 2 added Shares.
const Version = 2

// TaskVersion is the protocol version t needs.
func TaskVersion(t *Task) int {
	if len(t.Shares) > 0 {
		return 2
	}
	return 1
}

// Paths inside the guest.
const (
	// TaskFile is the task the driver hands to the guest agent.
	TaskFile = "/corral/task.json"
	// RootDir is where an OCI image's root filesystem lies in the guest;
	// the command runs chrooted into it when the task says so.
	RootDir = "/corral/rootfs"
	// ModulesDir holds the kernel modules the guest agent loads at boot,
	// in the order listed in its file "order".
	ModulesDir = "/lib/corral/modules"
)

// Names of the virtio-serial ports (as the guest sees them in
// /sys/class/virtio-ports/*/name).
const (
	PortStdout  = "corral.stdout"  // the command's stdout, a file on the host
	PortStderr  = "corral.stderr"  // the command's stderr, a file on the host
	PortExit    = "corral.exit"    // the command's Exit record, a file on the host
	PortControl = "corral.control" // Frames both ways, a unix socket on the host
)

// Task is what the guest agent runs: the session's command as main1.
type Task struct {
	Version  int      `json:"version"`
	ID       string   `json:"id"`
	Hostname string   `json:"hostname,omitempty"`
	Command  []string `json:"command"`
	// Env holds KEY=value entries.
	Env     []string `json:"env,omitempty"`
	WorkDir string   `json:"workdir,omitempty"`
	// Chroot is set when the command runs in the image's root (RootDir).
	Chroot bool `json:"chroot,omitempty"`
	// RootDisk is set when the image root is the first virtio disk's
	// filesystem (the whole disk or its first partition that mounts),
	// which the guest agent mounts on RootDir first.
	RootDisk bool `json:"root_disk,omitempty"`
	// Hosts are extra /etc/hosts entries, hostname to address.
	Hosts map[string]string `json:"hosts,omitempty"`
	// ResolvConf is the guest's /etc/resolv.conf: the host's, without
	// loopback name servers (as runc kernels get it); empty writes none.
	ResolvConf string `json:"resolv_conf,omitempty"`
	// NICs are the guest's network interfaces, to configure at boot.
	NICs []NIC `json:"nics,omitempty"`
	// Shares are host directories (volumes) the guest mounts over
	// virtio-9p, after its root disk and before the command.
	Shares []Share `json:"shares,omitempty"`
}

// Share is a host directory qemu exports over virtio-9p with mount tag
// Tag, mounted at Path in the guest (below RootDir for a chrooted task).
type Share struct {
	Tag      string `json:"tag"`
	Path     string `json:"path"`
	ReadOnly bool   `json:"read_only,omitempty"`
}

// NIC is one of the guest's interfaces on the kernel's network, found by
// its MAC.
type NIC struct {
	MAC string `json:"mac"`
	// Addresses are IPv4 prefixes ("10.88.0.5/24").
	Addresses []string `json:"addresses"`
	// Gateway is the default route's, if this interface has it.
	Gateway string `json:"gateway,omitempty"`
}

// Exit is how the command ended, written once to PortExit.
type Exit struct {
	ExitCode int `json:"exit_code"`
	// Signal is the signal that killed the command, 0 if it exited.
	Signal int `json:"signal,omitempty"`
	// Error says why the command could not run at all.
	Error string `json:"error,omitempty"`
}

// Frame types of the control channel.
const (
	// Host to guest.
	FrameHello      byte = 'H' // a new host connection: forget older execs
	FrameStart      byte = 'S' // start exec ID; payload: a JSON ExecStart
	FrameStdin      byte = 'I' // stdin bytes for exec ID
	FrameStdinClose byte = 'C' // close exec ID's stdin
	FrameSignal     byte = 'K' // payload: one byte, a signal; ID 0 is the main command
	// Guest to host.
	FrameStdout byte = 'O' // stdout bytes of exec ID
	FrameStderr byte = 'E' // stderr bytes of exec ID
	FrameExit   byte = 'X' // exec ID ended; payload: a JSON Exit
)

// MainID is the ID that FrameSignal uses for the session's command.
const MainID = 0

// ExecStart starts a command next to the session's command.
type ExecStart struct {
	Command []string `json:"command"`
	Env     []string `json:"env,omitempty"`
}

// MaxPayload bounds one frame's payload.
const MaxPayload = 1 << 20

// Frame is one message of the control channel.
type Frame struct {
	Type    byte
	ID      uint32
	Payload []byte
}

// ErrFrameTooLarge is returned for a frame whose length exceeds MaxPayload.
var ErrFrameTooLarge = errors.New("control frame too large")

// WriteFrame writes f as type (1 byte), ID (4 bytes) and payload length (4
// bytes, big endian), then the payload, in one Write.
func WriteFrame(w io.Writer, f Frame) error {
	if len(f.Payload) > MaxPayload {
		return ErrFrameTooLarge
	}
	buf := make([]byte, 9+len(f.Payload))
	buf[0] = f.Type
	binary.BigEndian.PutUint32(buf[1:5], f.ID)
	binary.BigEndian.PutUint32(buf[5:9], uint32(len(f.Payload)))
	copy(buf[9:], f.Payload)
	_, err := w.Write(buf)
	return err
}

// ReadFrame reads one frame from r.
func ReadFrame(r io.Reader) (Frame, error) {
	var hdr [9]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return Frame{}, err
	}
	n := binary.BigEndian.Uint32(hdr[5:9])
	if n > MaxPayload {
		return Frame{}, fmt.Errorf("%w: %d bytes", ErrFrameTooLarge, n)
	}
	f := Frame{Type: hdr[0], ID: binary.BigEndian.Uint32(hdr[1:5]), Payload: make([]byte, n)}
	if _, err := io.ReadFull(r, f.Payload); err != nil {
		return Frame{}, err
	}
	return f, nil
}
