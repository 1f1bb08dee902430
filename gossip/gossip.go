// Package gossip holds what servers and agents share about the serf pool:
// the tag schema and the serf/memberlist configuration.
package gossip

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/serf/serf"

	"github.com/corral-dev/corral/internal/logging"
	"github.com/corral-dev/corral/structs"
)

// Gossip tag keys shared by servers and agents.
const (
	TagRole    = "role"    // "server" or "agent"
	TagID      = "id"      // node ID
	TagRPC     = "rpc"     // gRPC address
	TagHTTP    = "http"    // HTTP API address (servers)
	TagGroup   = "group"   // resource group (agents)
	TagSlots   = "slots"   // compact capacity summary, "cpu=2,mem=8589934592"
	TagDrivers = "drivers" // comma-separated driver names
	TagVersion = "version"
	TagExpect  = "expect" // servers: -bootstrap-expect
)

// SetLogger routes serf's and memberlist's logs through l (one log
// format for the whole daemon), or, when raw is set, writes them to raw
// in their own format (tests pass io.Discard).
func SetLogger(conf *serf.Config, l *slog.Logger, raw io.Writer) {
	if raw != nil || l == nil {
		if raw == nil {
			raw = io.Discard
		}
		conf.Logger, conf.MemberlistConfig.Logger = nil, nil
		conf.LogOutput, conf.MemberlistConfig.LogOutput = raw, raw
		return
	}
	conf.LogOutput, conf.MemberlistConfig.LogOutput = nil, nil
	conf.Logger = logging.StdLogger(l, "serf")
	conf.MemberlistConfig.Logger = logging.StdLogger(l, "memberlist")
}

// NewConfig builds a serf config bound to addr ("host:port"); fast
// shortens the failure detector's timers (loopback tests, dev).
func NewConfig(nodeName, addr string, tags map[string]string, fast bool, events chan<- serf.Event) (*serf.Config, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("gossip address %q: %w", addr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("gossip port %q: %w", portStr, err)
	}
	conf := serf.DefaultConfig()
	conf.Init()
	conf.NodeName = nodeName
	conf.Tags = tags
	conf.EventCh = events
	conf.MemberlistConfig = memberlist.DefaultLANConfig()
	conf.MemberlistConfig.Name = nodeName
	conf.MemberlistConfig.BindAddr = host
	conf.MemberlistConfig.BindPort = port
	conf.MemberlistConfig.AdvertiseAddr = host
	conf.MemberlistConfig.AdvertisePort = port
	if fast {
		conf.MemberlistConfig.ProbeInterval = 200 * time.Millisecond
		conf.MemberlistConfig.ProbeTimeout = 100 * time.Millisecond
		conf.MemberlistConfig.GossipInterval = 50 * time.Millisecond
		conf.MemberlistConfig.SuspicionMult = 2
		conf.LeavePropagateDelay = 100 * time.Millisecond
		conf.BroadcastTimeout = time.Second
		conf.ReapInterval = 5 * time.Second
		conf.ReconnectInterval = 2 * time.Second
		conf.ReconnectTimeout = time.Minute
		conf.TombstoneTimeout = time.Minute
	}
	return conf, nil
}

// FormatSlots renders slots compactly for a gossip tag.
func FormatSlots(s structs.Slots) string {
	parts := make([]string, 0, len(s))
	for _, k := range s.Names() {
		parts = append(parts, k+"="+s[k].String())
	}
	return strings.Join(parts, ",")
}

// ParseSlots reads a slots gossip tag.
func ParseSlots(tag string) structs.Slots {
	out := structs.Slots{}
	for _, kv := range strings.Split(tag, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		if q, err := structs.ParseQuantity(v); err == nil {
			out[k] = q
		}
	}
	return out
}

// ParseKey decodes a gossip encryption key as `corral keygen` prints it:
// base64 of 16, 24 or 32 bytes (AES-128, -192 or -256).
func ParseKey(s string) ([]byte, error) {
	k, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil {
		return nil, fmt.Errorf("the gossip key is not base64: %w (create one with 'corral keygen')", err)
	}
	switch len(k) {
	case 16, 24, 32:
		return k, nil
	}
	return nil, fmt.Errorf("the gossip key is %d bytes; want 16, 24 or 32 (create one with 'corral keygen')", len(k))
}

// GenerateKey returns a new random 32-byte gossip key in base64.
func GenerateKey() (string, error) {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(k), nil
}

// Encrypt makes conf's member encrypt and authenticate every gossip
// message with key (serf's keyring): members without the key can neither
// read the pool nor join it.
func Encrypt(conf *serf.Config, key []byte) error {
	if len(key) == 0 {
		return nil
	}
	kr, err := memberlist.NewKeyring(nil, key)
	if err != nil {
		return fmt.Errorf("gossip keyring: %w", err)
	}
	conf.MemberlistConfig.Keyring = kr
	conf.MemberlistConfig.GossipVerifyIncoming = true
	conf.MemberlistConfig.GossipVerifyOutgoing = true
	return nil
}
