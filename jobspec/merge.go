package jobspec

import (
	"maps"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/structs"
)

// Merge returns a template's request (base) with what a create request
// (over) sets on top: every field over gives replaces the template's;
// resources, env and the GPU constraint merge key by key, roles by role
// name (and within a role, field by field). Lists (command, volumes,
// ports, ulimits, cap_add, depends_on) are replaced whole. Neither
// argument is modified.
func Merge(base, over *api.CreateSessionRequest) *api.CreateSessionRequest {
	out := clone(base)
	str := func(dst *string, v string) {
		if v != "" {
			*dst = v
		}
	}
	str(&out.Name, over.Name)
	if over.Type != "" {
		out.Type = over.Type
	}
	str(&out.Driver, over.Driver)
	str(&out.Image, over.Image)
	str(&out.ResourceGroup, over.ResourceGroup)
	str(&out.LostAfter, over.LostAfter)
	str(&out.ClusterMode, over.ClusterMode)
	str(&out.RunOn, over.RunOn)
	str(&out.FailOn, over.FailOn)
	str(&out.StartOrder, over.StartOrder)
	str(&out.Shm, over.Shm)
	str(&out.Network, over.Network)
	if len(over.Command) > 0 {
		out.Command = append([]string(nil), over.Command...)
	}
	if over.Priority != 0 {
		out.Priority = over.Priority
	}
	if !over.StartsAt.IsZero() {
		out.StartsAt = over.StartsAt
	}
	if over.MaxRetries != 0 {
		out.MaxRetries = over.MaxRetries
	}
	if over.ClusterSize != 0 {
		out.ClusterSize = over.ClusterSize
	}
	out.InfiniBand = out.InfiniBand || over.InfiniBand
	for _, l := range []struct{ dst, v *[]string }{
		{&out.DependsOn, &over.DependsOn}, {&out.Ulimits, &over.Ulimits}, {&out.CapAdd, &over.CapAdd}, {&out.Volumes, &over.Volumes},
	} {
		if len(*l.v) > 0 {
			*l.dst = append([]string(nil), (*l.v)...)
		}
	}
	if len(over.ServicePorts) > 0 {
		out.ServicePorts = append([]structs.ServicePort(nil), over.ServicePorts...)
	}
	if len(over.Env) > 0 {
		if out.Env == nil {
			out.Env = map[string]string{}
		}
		maps.Copy(out.Env, over.Env)
	}
	out.Resources = mergeSlots(out.Resources, over.Resources)
	out.GPUConstraint = mergeGPU(out.GPUConstraint, over.GPUConstraint)
	for _, rs := range over.Roles {
		i := -1
		for j := range out.Roles {
			if out.Roles[j].Role == rs.Role {
				i = j
			}
		}
		if i < 0 {
			out.Roles = append(out.Roles, cloneRole(rs))
			continue
		}
		r := &out.Roles[i]
		if rs.Count != 0 {
			r.Count = rs.Count
		}
		str(&r.Image, rs.Image)
		str(&r.Driver, rs.Driver)
		if len(rs.Command) > 0 {
			r.Command = append([]string(nil), rs.Command...)
		}
		r.Resources = mergeSlots(r.Resources, rs.Resources)
		r.GPUConstraint = mergeGPU(r.GPUConstraint, rs.GPUConstraint)
	}
	out.Template = ""
	return out
}

func mergeSlots(base, over structs.Slots) structs.Slots {
	if len(over) == 0 {
		return base
	}
	out := structs.Slots{}
	maps.Copy(out, base)
	maps.Copy(out, over)
	return out
}

func mergeGPU(base, over *structs.GPUConstraint) *structs.GPUConstraint {
	if over == nil {
		return base
	}
	out := &structs.GPUConstraint{}
	if base != nil {
		*out = *base
	}
	if over.Model != "" {
		out.Model = over.Model
	}
	if over.MinMemory != 0 {
		out.MinMemory = over.MinMemory
	}
	return out
}

func cloneRole(r api.RoleSpec) api.RoleSpec {
	r.Command = append([]string(nil), r.Command...)
	r.Resources = r.Resources.Copy()
	r.GPUConstraint = r.GPUConstraint.Copy()
	return r
}

// clone deep-copies a request.
func clone(r *api.CreateSessionRequest) *api.CreateSessionRequest {
	c := *r
	c.Command = append([]string(nil), r.Command...)
	c.DependsOn = append([]string(nil), r.DependsOn...)
	c.Ulimits = append([]string(nil), r.Ulimits...)
	c.CapAdd = append([]string(nil), r.CapAdd...)
	c.Volumes = append([]string(nil), r.Volumes...)
	c.ServicePorts = append([]structs.ServicePort(nil), r.ServicePorts...)
	if r.Env != nil {
		c.Env = maps.Clone(r.Env)
	}
	if r.Resources != nil {
		c.Resources = r.Resources.Copy()
	}
	c.GPUConstraint = r.GPUConstraint.Copy()
	c.Roles = nil
	for _, rs := range r.Roles {
		c.Roles = append(c.Roles, cloneRole(rs))
	}
	return &c
}
