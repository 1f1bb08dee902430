package server

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"path"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/rpc"
	"github.com/corral-dev/corral/server/state"
	"github.com/corral-dev/corral/structs"
)

// Volumes (docs/volumes.md): users' named directories on storage
// backends that agents declare (-volume-root), mounted into kernels
// (POST /v1/sessions "volumes"), shared explicitly, and served over SFTP
// by system sessions ("sftp").

// registerVolumes adds the volume and SSH key routes.
func (s *Server) registerVolumes(mux *http.ServeMux) {
	mux.HandleFunc("POST /v1/volumes", s.wrap(s.createVolume))
	mux.HandleFunc("GET /v1/volumes", s.wrap(s.listVolumes))
	mux.HandleFunc("DELETE /v1/volumes/{name}", s.wrap(s.deleteVolume))
	mux.HandleFunc("POST /v1/volumes/{name}/share", s.wrap(s.shareVolume))
	mux.HandleFunc("POST /v1/volumes/{name}/unshare", s.wrap(s.shareVolume))
	mux.HandleFunc("GET /v1/user/ssh-keys", s.wrap(s.listSSHKeys))
	mux.HandleFunc("POST /v1/user/ssh-keys", s.wrap(s.addSSHKeys))
}

// backendsOf lists the volume backends that ALIVE agents (of group, when
// set) reach, sorted.
func backendsOf(snap *state.Snapshot, group string) []string {
	agents, _ := snap.Agents(nil)
	var out []string
	for _, a := range agents {
		if a.Status != structs.AgentAlive || (group != "" && a.ResourceGroup != group) {
			continue
		}
		for b := range a.VolumeRoots {
			if !slices.Contains(out, b) {
				out = append(out, b)
			}
		}
	}
	slices.Sort(out)
	return out
}

func (s *Server) createVolume(w http.ResponseWriter, r *http.Request) (any, error) {
	var req api.CreateVolumeRequest
	if err := decodeBody(r, &req); err != nil {
		return nil, err
	}
	if err := structs.CheckVolumeName("volume", req.Name); err != nil {
		return nil, badRequest("%v", err)
	}
	if req.ResourceGroup != "" && !nameRe.MatchString(req.ResourceGroup) {
		return nil, badRequest("invalid resource group name %q", req.ResourceGroup)
	}
	owner := callerOf(r.Context()).key.User
	snap := s.state.Snapshot()
	known := backendsOf(snap, req.ResourceGroup)
	switch {
	case req.Backend == "" && len(known) == 1:
		req.Backend = known[0]
	case req.Backend == "":
		return nil, badRequest("give the volume's backend with -backend NAME: the agents reach %s", phraseList(known))
	case !slices.Contains(known, req.Backend):
		return nil, badRequest("no alive agent reaches backend %q (agents declare backends with -volume-root NAME=PATH; they reach %s)", req.Backend, phraseList(known))
	}
	var quota int64
	if req.Quota != "" {
		q, err := structs.ParseBytes(req.Quota)
		if err != nil || q < 0 {
			return nil, badRequest("quota %q: want a size such as 100G", req.Quota)
		}
		quota = int64(q / structs.QuantityScale)
	}
	v := &structs.Volume{ID: structs.VolumeID(owner, req.Name), Name: req.Name, Owner: owner, Backend: req.Backend,
		ResourceGroup: req.ResourceGroup, QuotaBytes: quota, CreatedAt: time.Now().UTC()}
	if _, _, err := s.apply(structs.VolumeUpsertRequestType, &structs.VolumeUpsertRequest{Volume: v, Create: true, Time: v.CreatedAt}); err != nil {
		if errors.Is(err, state.ErrVolumeExists) {
			return nil, &httpError{code: http.StatusConflict, msg: fmt.Sprintf("you already have a volume named %q: delete it or pick another name", req.Name)}
		}
		return nil, err
	}
	return s.state.Snapshot().Volume(v.ID)
}

func phraseList(names []string) string {
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}

// ownVolume is the caller's volume name (an admin may name OWNER/NAME
// through ?owner=).
func (s *Server) ownVolume(r *http.Request) (*structs.Volume, error) {
	id := callerOf(r.Context())
	owner := id.key.User
	if o := r.URL.Query().Get("owner"); o != "" && id.admin() {
		owner = o
	}
	v, err := s.state.Snapshot().Volume(structs.VolumeID(owner, r.PathValue("name")))
	if err != nil {
		return nil, &httpError{code: http.StatusNotFound, msg: fmt.Sprintf("you have no volume named %q (corral volume list shows yours)", r.PathValue("name"))}
	}
	return v, nil
}

func (s *Server) deleteVolume(w http.ResponseWriter, r *http.Request) (any, error) {
	v, err := s.ownVolume(r)
	if err != nil {
		return nil, err
	}
	if _, _, err := s.apply(structs.VolumeDeleteRequestType, &structs.VolumeDeleteRequest{ID: v.ID, Time: time.Now().UTC()}); err != nil {
		if errors.Is(err, state.ErrVolumeInUse) {
			return nil, &httpError{code: http.StatusConflict, msg: err.Error()}
		}
		return nil, err
	}
	return map[string]string{"deleted": v.ID, "note": "the files stay on the backend"}, nil
}

func (s *Server) shareVolume(w http.ResponseWriter, r *http.Request) (any, error) {
	var req api.ShareVolumeRequest
	if err := decodeBody(r, &req); err != nil {
		return nil, err
	}
	v, err := s.ownVolume(r)
	if err != nil {
		return nil, err
	}
	if err := structs.CheckVolumeName("user", req.User); err != nil {
		return nil, badRequest("%v", err)
	}
	if req.User == v.Owner {
		return nil, badRequest("user %s owns volume %s already", req.User, v.Name)
	}
	v = v.Copy()
	if strings.HasSuffix(r.URL.Path, "/unshare") {
		if !v.Unshare(req.User) {
			return nil, &httpError{code: http.StatusNotFound, msg: fmt.Sprintf("volume %s is not shared with %s", v.Name, req.User)}
		}
	} else {
		if _, err := s.state.Snapshot().User(req.User); err != nil {
			return nil, &httpError{code: http.StatusNotFound, msg: fmt.Sprintf("no user named %q", req.User)}
		}
		v.Share(req.User, req.ReadOnly)
	}
	if _, _, err := s.apply(structs.VolumeUpsertRequestType, &structs.VolumeUpsertRequest{Volume: v, Time: time.Now().UTC()}); err != nil {
		return nil, err
	}
	return s.state.Snapshot().Volume(v.ID)
}

func (s *Server) listVolumes(w http.ResponseWriter, r *http.Request) (any, error) {
	id := callerOf(r.Context())
	snap := s.state.Snapshot()
	all, err := snap.Volumes()
	if err != nil {
		return nil, err
	}
	out := &api.VolumeList{Volumes: []*api.VolumeInfo{}}
	for _, v := range all {
		ok, ro := v.Access(id.key.User)
		if !ok && !id.admin() {
			continue
		}
		info := &api.VolumeInfo{Volume: v, Access: "rw"}
		switch {
		case v.Owner == id.key.User:
			info.Access = "owner"
		case ro:
			info.Access = "ro"
		case !ok:
			info.Access = "admin"
		}
		out.Volumes = append(out.Volumes, info)
	}
	s.measureVolumes(r.Context(), snap, out.Volumes)
	return out, nil
}

// measureVolumes fills the usage of vols: for each backend, one agent
// that reaches it (the embedded one first) measures its volumes.
func (s *Server) measureVolumes(ctx context.Context, snap *state.Snapshot, vols []*api.VolumeInfo) {
	byBackend := map[string][]*api.VolumeInfo{}
	for _, v := range vols {
		byBackend[v.Backend] = append(byBackend[v.Backend], v)
	}
	agents, _ := snap.Agents(nil)
	local, _ := s.localAgent.Load().(string)
	slices.SortStableFunc(agents, func(a, b *structs.Agent) int {
		if a.ID == local {
			return -1
		} else if b.ID == local {
			return 1
		}
		return 0
	})
	for backend, vs := range byBackend {
		fail := func(msg string) {
			for _, v := range vs {
				v.UsageError = msg
			}
		}
		i := slices.IndexFunc(agents, func(a *structs.Agent) bool {
			_, ok := a.VolumeRoots[backend]
			return ok && a.Status == structs.AgentAlive
		})
		if i < 0 {
			fail("no alive agent reaches backend " + backend)
			continue
		}
		c, err := s.agents.client(agents[i].RPCAddr)
		if err != nil {
			fail(err.Error())
			continue
		}
		req := &rpc.VolumeUsageRequest{}
		for _, v := range vs {
			req.Volumes = append(req.Volumes, rpc.VolumeDir{Backend: backend, Dir: v.Dir(), QuotaBytes: v.QuotaBytes})
		}
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		resp, err := c.VolumeUsage(cctx, req)
		cancel()
		if err != nil {
			fail("measuring on agent " + agents[i].Name + ": " + err.Error())
			continue
		}
		for j, u := range resp.Volumes {
			if j < len(vs) {
				vs[j].UsageBytes, vs[j].UsageFiles, vs[j].UsageError = u.Bytes, u.Files, u.Error
				vs[j].QuotaEnforcement = u.Quota
			}
		}
	}
}

func (s *Server) listSSHKeys(w http.ResponseWriter, r *http.Request) (any, error) {
	keys, err := s.state.Snapshot().SSHKeys(callerOf(r.Context()).key.User)
	if err != nil {
		return nil, err
	}
	return &api.SSHKeys{Keys: append([]string{}, keys...)}, nil
}

// maxSSHKeys bounds a user's keys.
const maxSSHKeys = 32

func (s *Server) addSSHKeys(w http.ResponseWriter, r *http.Request) (any, error) {
	var req api.SSHKeys
	if err := decodeBody(r, &req); err != nil {
		return nil, err
	}
	user := callerOf(r.Context()).key.User
	keys, err := s.state.Snapshot().SSHKeys(user)
	if err != nil {
		return nil, err
	}
	if len(req.Keys) == 0 {
		return nil, badRequest("no key given: send {\"keys\": [\"ssh-ed25519 AAAA... comment\"]}")
	}
	for i, line := range req.Keys {
		pk, comment, _, _, err := ssh.ParseAuthorizedKey([]byte(line))
		if err != nil {
			return nil, badRequest("key %d is not an SSH public key (a line of authorized_keys or a .pub file): %v", i+1, err)
		}
		norm := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pk)))
		if comment != "" {
			norm += " " + comment
		}
		if !slices.ContainsFunc(keys, func(k string) bool { return sameKey(k, pk) }) {
			keys = append(keys, norm)
		}
	}
	if len(keys) > maxSSHKeys {
		return nil, badRequest("at most %d SSH keys per user", maxSSHKeys)
	}
	if _, _, err := s.apply(structs.SSHKeysSetRequestType, &structs.SSHKeysSetRequest{User: user, Keys: keys, Time: time.Now().UTC()}); err != nil {
		return nil, err
	}
	return &api.SSHKeys{Keys: keys}, nil
}

func sameKey(line string, pk ssh.PublicKey) bool {
	k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(line))
	return err == nil && string(k.Marshal()) == string(pk.Marshal())
}

// sftpPortBase and sftpPorts are where SFTP kernels listen: exec kernels
// share their agent's network, so each session draws its own port.
const (
	sftpPortBase = 30000
	sftpPorts    = 10000
)

// pickSFTPPort returns the first port from sftpPortBase+start onward
// (wrapping) that no live SFTP session holds; exec kernels share their
// agent's network, and the session is not placed yet, so a port unused
// cluster-wide is one unused on whichever agent gets it.
func pickSFTPPort(used map[int]bool, start int) (int, bool) {
	for i := 0; i < sftpPorts; i++ {
		p := sftpPortBase + (start+i)%sftpPorts
		if !used[p] {
			return p, true
		}
	}
	return 0, false
}

// sftpReservations holds the SFTP ports that creates on this server
// picked and have not committed yet: two creates at the same moment must
// not draw the same port.
type sftpReservations struct {
	mu   sync.Mutex
	held map[int]bool
}

// reserve picks a port that neither a live session (used, read under the
// lock from a fresh snapshot, so that it holds every port a create
// released before) nor a create in flight holds, and holds it until
// release.
func (r *sftpReservations) reserve(used func() (map[int]bool, error), start int) (int, bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	u, err := used()
	if err != nil {
		return 0, false, err
	}
	for p := range r.held {
		u[p] = true
	}
	port, ok := pickSFTPPort(u, start)
	if ok {
		if r.held == nil {
			r.held = map[int]bool{}
		}
		r.held[port] = true
	}
	return port, ok, nil
}

// release lets go of the SFTP port that kernels' SFTP server holds (none:
// nothing), once its create committed (the state holds it from then on)
// or failed.
func (r *sftpReservations) release(kernels []*structs.Kernel) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, k := range kernels {
		if k.SFTP != nil {
			delete(r.held, k.SFTP.Port)
		}
	}
}

// prepareVolumeCreate readies an SFTP create before validation: a
// system session on the exec driver whose command the agent replaces.
func prepareVolumeCreate(req *api.CreateSessionRequest) error {
	if !req.SFTP {
		return nil
	}
	if req.Type == "" {
		req.Type = structs.SessionTypeSystem
	}
	if req.Type != structs.SessionTypeSystem {
		return badRequest("sftp sessions are of type system")
	}
	if len(req.Volumes) == 0 {
		return badRequest("an sftp session serves a volume: give one with -volume NAME")
	}
	if req.ClusterSize > 1 || req.Image != "" || (req.Driver != "" && req.Driver != "exec") || len(req.Command) > 0 || len(req.ServicePorts) > 0 {
		return badRequest("an sftp session runs corral's SFTP server in one exec kernel: give no image, driver, command, ports or cluster size")
	}
	req.Driver = "exec"
	req.Command = []string{"corral-kernel", "sftp"}
	return nil
}

// attachVolumes resolves the request's volumes for the session's owner
// and mounts them into every kernel; for an SFTP session it makes main1
// the server of the first one.
func (s *Server) attachVolumes(snap *state.Snapshot, req *api.CreateSessionRequest, sess *structs.Session, kernels []*structs.Kernel) error {
	if len(req.Volumes) > 16 {
		return badRequest("%d volumes: at most 16 per session", len(req.Volumes))
	}
	var mounts []structs.VolumeMount
	for _, arg := range req.Volumes {
		if req.SFTP && !strings.Contains(arg, ":") {
			arg += ":/volume"
		}
		ref, err := structs.ParseVolumeRef(arg)
		if err != nil {
			return badRequest("%v", err)
		}
		id := ref.Volume
		if !strings.Contains(id, "/") {
			id = structs.VolumeID(sess.Owner, id)
		}
		v, err := snap.Volume(id)
		ok, ro := false, false
		if err == nil {
			ok, ro = v.Access(sess.Owner)
		}
		if !ok {
			return &httpError{code: http.StatusNotFound, msg: fmt.Sprintf("no volume %q that you may mount (yours are NAME, others' OWNER/NAME once shared with you: corral volume list)", ref.Volume)}
		}
		if ro && !ref.ReadOnly && !req.SFTP {
			return &httpError{code: http.StatusForbidden, msg: fmt.Sprintf("volume %s is shared with you read-only: mount it with :ro", id)}
		}
		if v.ResourceGroup != "" && v.ResourceGroup != sess.ResourceGroup {
			return badRequest("volume %s belongs to resource group %q, the session to %q", id, v.ResourceGroup, sess.ResourceGroup)
		}
		target := path.Clean(ref.Target)
		for _, m := range mounts {
			if m.Target == target {
				return badRequest("two volumes are mounted at %s", target)
			}
		}
		mounts = append(mounts, structs.VolumeMount{Volume: id, Backend: v.Backend, Dir: v.Dir(), Target: target, ReadOnly: ref.ReadOnly || ro, QuotaBytes: v.QuotaBytes})
		if !slices.Contains(sess.Volumes, id) {
			sess.Volumes = append(sess.Volumes, id)
		}
	}
	for _, k := range kernels {
		if len(mounts) > 0 && k.Driver == "host" {
			return badRequest("kernel %s: driver host has no mount namespace and cannot mount volumes: use exec, runc or a plugin driver", k.Hostname)
		}
		k.Volumes = slices.Clone(mounts)
	}
	if !req.SFTP {
		return nil
	}
	keys, err := snap.SSHKeys(sess.Owner)
	if err != nil {
		return err
	}
	if len(keys) == 0 {
		return badRequest("you have no SSH key for SFTP: add one with corral user ssh-key add ~/.ssh/id_ed25519.pub")
	}
	live := func() (map[int]bool, error) {
		used := map[int]bool{}
		err := s.state.Snapshot().EachSession(func(o *structs.Session) {
			if o.Status.Terminal() {
				return
			}
			for _, sp := range o.ServicePorts {
				if sp.Name == structs.SFTPPortName {
					used[sp.Port] = true
				}
			}
		})
		return used, err
	}
	port, ok, err := s.sftpPorts.reserve(live, rand.IntN(sftpPorts))
	if err != nil {
		return err
	}
	if !ok {
		return &httpError{code: http.StatusServiceUnavailable, msg: fmt.Sprintf("all %d SFTP ports (%d-%d) are held by live SFTP sessions: end one first", sftpPorts, sftpPortBase, sftpPortBase+sftpPorts-1)}
	}
	kernels[0].SFTP = &structs.SFTPServer{Port: port, AuthorizedKeys: keys, Root: mounts[0].Target}
	sess.ServicePorts = append(sess.ServicePorts, structs.ServicePort{Name: structs.SFTPPortName, Port: port, Protocol: "tcp"})
	return nil
}
