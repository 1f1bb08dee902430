package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/structs"
)

var serverCommands = []command{
	{"members", "[flags]", "list the servers: gossip status, raft role, addresses, version", (*cli).serverMembers},
}

var operatorCommands = []command{
	{"raft", "list-peers|remove-peer [flags]", "list the raft peers, or remove a dead server from the quorum (admin)", (*cli).operatorRaft},
	{"snapshot", "save|restore FILE [flags]", "save the cluster's state to FILE, or restore it from FILE (admin)", (*cli).operatorSnapshot},
}

var raftCommands = []command{
	{"list-peers", "[flags]", "list the servers of the raft configuration (admin)", (*cli).raftListPeers},
	{"remove-peer", "-id ID | -peer-address ADDR [-force] [flags]", "remove a server from the raft configuration (admin)", (*cli).raftRemovePeer},
}

var snapshotCommands = []command{
	{"save", "FILE [flags]", "write a snapshot of the whole state, taken on the leader, to FILE (admin)", (*cli).snapshotSave},
	{"restore", "FILE [flags]", "replace the cluster's state with the snapshot in FILE (admin)", (*cli).snapshotRestore},
}

func (c *cli) operatorRaft(ctx context.Context, args []string) error {
	return c.group(ctx, "operator raft", raftCommands, args)
}

func (c *cli) operatorSnapshot(ctx context.Context, args []string) error {
	return c.group(ctx, "operator snapshot", snapshotCommands, args)
}

func (c *cli) serverMembers(ctx context.Context, args []string) error {
	return listCommand(c, ctx, args, "server members", "List the cluster's servers: gossip status, raft role (leader, follower, nonvoter, none), addresses and build version.",
		(*api.Client).ServerMembers, "NAME\tID\tADDRESS\tSTATUS\tRAFT\tRPC\tHTTP\tVERSION", func(m *api.ServerMember) string {
			return fmt.Sprintf("%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s", m.Name, shortID(m.ID), m.Address, m.Status, m.Raft, m.RPCAddr, dash(m.HTTPAddr), dash(m.Version))
		})
}

func renderPeers(c *cli, peers *api.RaftPeers) error {
	tw := newTable(c.stdout)
	fmt.Fprintln(tw, "NODE\tID\tADDRESS\tSTATE\tVOTER")
	for _, p := range peers.Peers {
		st := "follower"
		if p.Leader {
			st = "leader"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%t\n", dash(p.Node), p.ID, p.Address, st, p.Voter)
	}
	return tw.Flush()
}

func (c *cli) raftListPeers(ctx context.Context, args []string) error {
	f := c.newFlags("operator raft list-peers", "[flags]", "List the servers of the raft configuration, as the leader has it (admin).", true)
	if err := f.parseNone(args); err != nil {
		return err
	}
	client, err := f.client()
	if err != nil {
		return err
	}
	peers, err := client.RaftPeers(ctx)
	if err != nil {
		return err
	}
	if f.json {
		return printJSON(c.stdout, peers)
	}
	return renderPeers(c, peers)
}

func (c *cli) raftRemovePeer(ctx context.Context, args []string) error {
	f := c.newFlags("operator raft remove-peer", "-id ID | -peer-address ADDR [-force] [flags]",
		"Remove a server from the raft configuration (admin): a server that died and will not\n"+
			"come back, so that the quorum is counted without it. A server that leaves\n"+
			"gracefully removes itself. The leader is refused without -force.", false)
	id := f.String("id", "", "raft ID of the peer (see 'corral operator raft list-peers')")
	addr := f.String("peer-address", "", "raft address (host:port) of the peer (-address is the API's)")
	force := f.Bool("force", false, "remove the peer even when it is the leader (an election follows)")
	if err := f.parseNone(args); err != nil {
		return err
	}
	if (*id == "") == (*addr == "") {
		return f.usageErr("give the peer as -id ID or -peer-address ADDR, one of them")
	}
	client, err := f.client()
	if err != nil {
		return err
	}
	peers, err := client.RemoveRaftPeer(ctx, &api.RemovePeerRequest{ID: *id, Address: *addr, Force: *force})
	if err != nil {
		return err
	}
	who := *id
	if who == "" {
		who = *addr
	}
	fmt.Fprintf(c.stdout, "removed raft peer %s\n", who)
	if len(peers.Peers) == 0 {
		return nil
	}
	return renderPeers(c, peers)
}

func (c *cli) snapshotSave(ctx context.Context, args []string) error {
	f := c.newFlags("operator snapshot save", "FILE [flags]",
		"Write a snapshot of the cluster's whole state (sessions, kernels, users, keys, policies,\n"+
			"groups, endpoints, volumes, templates, the cluster CA), read on the leader, to FILE (admin). The file holds\n"+
			"key hashes and the CA's private key: keep it as safe as an admin key.", false)
	file, err := f.parseRef(args, "snapshot file")
	if err != nil {
		return err
	}
	client, err := f.client()
	if err != nil {
		return err
	}
	// Written next to FILE, renamed into place once whole: a failed save
	// never leaves a truncated FILE.
	tmp, err := os.CreateTemp(filepath.Dir(file), "."+filepath.Base(file)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	n, err := client.SaveSnapshot(ctx, tmp)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.Chmod(tmp.Name(), 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), file); err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "saved snapshot to %s (%s)\n", file, structs.FormatBytes(structs.Whole(n)))
	return nil
}

func (c *cli) snapshotRestore(ctx context.Context, args []string) error {
	f := c.newFlags("operator snapshot restore", "FILE [flags]",
		"Replace the cluster's state with the snapshot in FILE (admin). The cluster keeps its\n"+
			"servers, CA, join token and registered agents; sessions, kernels, users, keys, policies,\n"+
			"groups, endpoints, volumes and templates become the snapshot's: the snapshot's keys work afterwards, keys\n"+
			"made since do not. Restore onto a new cluster before it runs work.", true)
	file, err := f.parseRef(args, "snapshot file")
	if err != nil {
		return err
	}
	client, err := f.client()
	if err != nil {
		return err
	}
	fh, err := os.Open(file)
	if err != nil {
		return err
	}
	defer fh.Close()
	res, err := client.RestoreSnapshot(ctx, fh)
	if err != nil {
		return err
	}
	if f.json {
		return printJSON(c.stdout, res)
	}
	fmt.Fprintf(c.stdout, "restored snapshot of index %d at index %d: %d sessions, %d users, %d keys\n", res.SnapshotIndex, res.Index, res.Sessions, res.Users, res.Keys)
	return nil
}

// clusterOpCommands lists the operator commands for corral -h, with their
// full names (they live under two groups: server and operator).
func clusterOpCommands() []command {
	out := []command{{name: "server members", summary: serverCommands[0].summary}}
	for _, sc := range raftCommands {
		out = append(out, command{name: "operator raft " + sc.name, summary: sc.summary})
	}
	for _, sc := range snapshotCommands {
		out = append(out, command{name: "operator snapshot " + sc.name, summary: sc.summary})
	}
	return out
}
