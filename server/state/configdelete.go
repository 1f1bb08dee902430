package state

import (
	"fmt"
	"slices"
	"strings"

	"github.com/corral-dev/corral/structs"
)

// ConfigUse says what still uses the named users, policies and groups,
// one reason per name that is in use (empty: all may go). DeleteConfig
// refuses with these reasons; the API asks first for a clear answer.
func (sn *Snapshot) ConfigUse(req *structs.ConfigDeleteRequest) ([]string, error) {
	users, policies, groups := set(req.Users), set(req.Policies), set(req.Groups)
	live := map[string][]string{} // "user:alice", "group:gpu" -> session IDs
	err := sn.EachSession(func(s *structs.Session) {
		if s.Status.Terminal() {
			return
		}
		if users[s.Owner] {
			live["user:"+s.Owner] = append(live["user:"+s.Owner], s.ID)
		}
		if groups[s.ResourceGroup] {
			live["group:"+s.ResourceGroup] = append(live["group:"+s.ResourceGroup], s.ID)
		}
	})
	if err != nil {
		return nil, err
	}
	keys, err := sn.Keys()
	if err != nil {
		return nil, err
	}
	keysOf := map[string][]string{} // policy -> keys naming it
	for _, k := range keys {
		if policies[k.Policy] && !users[k.User] {
			keysOf[k.Policy] = append(keysOf[k.Policy], k.AccessKey)
		}
	}
	eps, err := sn.Endpoints()
	if err != nil {
		return nil, err
	}
	agents, err := sn.Agents(nil)
	if err != nil {
		return nil, err
	}
	vols, err := sn.Volumes()
	if err != nil {
		return nil, err
	}
	tmpls, err := sn.Templates()
	if err != nil {
		return nil, err
	}
	var why []string
	for _, u := range req.Users {
		if ids := live["user:"+u]; len(ids) > 0 {
			why = append(why, fmt.Sprintf("user %s has %s that have not ended (%s): destroy them (corral session destroy) or wait for them to end", u, count(len(ids), "session"), list(ids)))
		}
		for _, e := range eps {
			if e.Owner == u {
				why = append(why, fmt.Sprintf("user %s owns endpoint %s: delete it first (corral endpoint delete %s)", u, e.Name, e.Name))
			}
		}
		for _, v := range vols {
			if v.Owner == u {
				why = append(why, fmt.Sprintf("user %s owns volume %s: delete it first (corral volume delete %s, as %s; its files stay in the backend)", u, v.Name, v.Name, u))
			}
		}
		for _, t := range tmpls {
			if t.Owner == u {
				why = append(why, fmt.Sprintf("user %s owns template %s: delete it first (corral template delete %s, as %s)", u, t.Name, t.Name, u))
			}
		}
	}
	for _, p := range req.Policies {
		if ks := keysOf[p]; len(ks) > 0 {
			why = append(why, fmt.Sprintf("policy %s is applied to %s (%s): apply another policy to them first (corral policy apply NAME -key KEY) or revoke them", p, count(len(ks), "access key"), list(ks)))
		}
	}
	for _, g := range req.Groups {
		var in []string
		for _, a := range agents {
			if a.ResourceGroup == g && a.Status != structs.AgentLost {
				in = append(in, a.Name)
			}
		}
		if len(in) > 0 {
			why = append(why, fmt.Sprintf("group %s has %s (%s): move them to another group (restart them with another -group) first", g, count(len(in), "agent"), list(in)))
		}
		if ids := live["group:"+g]; len(ids) > 0 {
			why = append(why, fmt.Sprintf("group %s has %s that have not ended (%s)", g, count(len(ids), "session"), list(ids)))
		}
		for _, e := range eps {
			if e.ResourceGroup == g {
				why = append(why, fmt.Sprintf("group %s runs endpoint %s", g, e.Name))
			}
		}
		for _, v := range vols {
			if v.ResourceGroup == g {
				why = append(why, fmt.Sprintf("group %s holds volume %s/%s", g, v.Owner, v.Name))
			}
		}
	}
	return why, nil
}

// DeleteConfig deletes users (and their access keys), policies and groups,
// all or nothing: a name that does not exist is ErrNotFound, one still in
// use ErrInUse with the reason.
func (s *StateStore) DeleteConfig(index uint64, req *structs.ConfigDeleteRequest) error {
	w := s.write(index)
	defer w.txn.Abort()
	sn := &Snapshot{txn: w.txn}
	for _, t := range []struct {
		table, what string
		names       []string
	}{{tableUsers, "user", req.Users}, {tablePolicies, "resource policy", req.Policies}, {tableGroups, "resource group", req.Groups}} {
		for _, name := range t.names {
			raw, err := w.txn.First(t.table, "id", name)
			if err != nil {
				return err
			}
			if raw == nil {
				return fmt.Errorf("%s %q: %w", t.what, name, ErrNotFound)
			}
			if err := w.txn.Delete(t.table, raw); err != nil {
				return err
			}
			w.dirty[t.table] = true
		}
	}
	why, err := sn.ConfigUse(req)
	if err != nil {
		return err
	}
	if len(why) > 0 {
		return fmt.Errorf("%s: %w", strings.Join(why, "; "), ErrInUse)
	}
	users := set(req.Users)
	keys, err := sn.Keys()
	if err != nil {
		return err
	}
	for _, k := range keys {
		if !users[k.User] {
			continue
		}
		if err := w.txn.Delete(tableKeys, k); err != nil {
			return err
		}
		w.dirty[tableKeys] = true
		if u, err := w.txn.First(tableUsage, "id", k.AccessKey); err == nil && u != nil {
			if err := w.txn.Delete(tableUsage, u); err != nil {
				return err
			}
			w.dirty[tableUsage] = true
		}
	}
	return w.commit()
}

func set(names []string) map[string]bool {
	m := make(map[string]bool, len(names))
	for _, n := range names {
		m[n] = true
	}
	return m
}

func count(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

// list names up to three, then how many more.
func list(names []string) string {
	names = slices.Clone(names)
	slices.Sort(names)
	if len(names) <= 3 {
		return strings.Join(names, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(names[:3], ", "), len(names)-3)
}
