package scheduler

import (
	"errors"
	"fmt"
	"math/bits"
	"path"
	"slices"
	"strings"

	"github.com/corral-dev/corral/structs"
)

// Device choice: which GPUs (by UUID) a kernel's GPU slots become. The
// scheduler counts free matching devices per agent (DeviceFit) to decide
// where a kernel may go; the FSM calls ChooseDevices in the apply that
// places it, against the agent's latest holders, so two kernels never get
// the same device. Both are pure and deterministic: the same agent, holders
// and request always give the same devices.

// GPUDemand is what a kernel's slots ask of an agent's devices: whole GPUs
// and MIG instances per profile.
type GPUDemand struct {
	// Whole is the number of whole GPUs (cuda.device).
	Whole int
	// MIG holds the MIG instances per profile (cuda.mig-<profile>),
	// profiles sorted.
	MIG []MIGDemand
}

// MIGDemand is a number of MIG instances of one profile.
type MIGDemand struct {
	Profile string
	N       int
}

// Empty reports whether d asks for no device.
func (d GPUDemand) Empty() bool { return d.Whole == 0 && len(d.MIG) == 0 }

// ErrNotWhole: a device slot asks for a fraction of a device.
var ErrNotWhole = errors.New("device slots count whole devices")

// DemandOf reads the device slots of a request. cuda.device and every
// cuda.mig-<profile> must be whole numbers of zero or more.
func DemandOf(res structs.Slots) (GPUDemand, error) {
	var d GPUDemand
	has := false
	for name := range res {
		if name == structs.SlotCUDADevice || strings.HasPrefix(name, structs.SlotMIGPrefix) {
			has = true
			break
		}
	}
	if !has {
		return d, nil // the common case, without sorting names
	}
	for _, name := range res.Names() {
		q := res[name]
		_, mig := structs.IsMIGSlot(name)
		if name != structs.SlotCUDADevice && !mig {
			continue
		}
		if q < 0 || q%structs.QuantityScale != 0 {
			return GPUDemand{}, fmt.Errorf("%w: %s=%s is not a whole number of zero or more", ErrNotWhole, name, q)
		}
		n := int(q / structs.QuantityScale)
		if n == 0 {
			continue
		}
		if name == structs.SlotCUDADevice {
			d.Whole = n
			continue
		}
		profile, _ := structs.IsMIGSlot(name)
		d.MIG = append(d.MIG, MIGDemand{Profile: profile, N: n})
	}
	return d, nil
}

// ValidateGPUModel checks a model glob: alternatives separated by '|', each
// a path.Match pattern.
func ValidateGPUModel(model string) error {
	for _, alt := range strings.Split(model, "|") {
		alt = strings.TrimSpace(alt)
		if alt == "" {
			return fmt.Errorf("gpu model %q has an empty alternative (write e.g. \"H100*|H200*\")", model)
		}
		if _, err := path.Match(strings.ToLower(alt), ""); err != nil {
			return fmt.Errorf("gpu model %q: bad pattern %q (use * ? and [...] as in shell globs)", model, alt)
		}
	}
	return nil
}

// MatchGPUModel reports whether a device name (e.g. "NVIDIA H200") matches
// a model glob: one of its '|'-separated alternatives matches the name or
// the name without its leading "NVIDIA ", ignoring case. An empty model
// matches every name.
func MatchGPUModel(model, name string) bool {
	if model == "" {
		return true
	}
	n := strings.ToLower(name)
	short := strings.TrimPrefix(n, "nvidia ")
	for _, alt := range strings.Split(model, "|") {
		alt = strings.ToLower(strings.TrimSpace(alt))
		if ok, _ := path.Match(alt, n); ok {
			return true
		}
		if ok, _ := path.Match(alt, short); ok {
			return true
		}
	}
	return false
}

// matchGPU reports whether a whole GPU satisfies the constraint.
func matchGPU(c *structs.GPUConstraint, g *structs.GPU) bool {
	if c == nil {
		return true
	}
	if c.MinMemory > 0 && structs.Whole(g.MemoryBytes) < c.MinMemory {
		return false
	}
	return MatchGPUModel(c.Model, g.Name)
}

// matchMIG reports whether a MIG instance of GPU g satisfies the
// constraint: the model is the GPU's, the memory the instance's.
func matchMIG(c *structs.GPUConstraint, g *structs.GPU, m *structs.MIGInstance) bool {
	if c == nil {
		return true
	}
	if c.MinMemory > 0 && structs.Whole(m.MemoryBytes) < c.MinMemory {
		return false
	}
	return MatchGPUModel(c.Model, g.Name)
}

// free reports whether a device UUID is neither held by a kernel nor
// taken by another kernel of the same apply or pass.
func free(holders map[string]string, taken map[string]bool, uuid string) bool {
	return holders[uuid] == "" && !taken[uuid]
}

// wholeCandidates returns the agent's healthy GPUs not in MIG mode, free
// and matching c, in index order.
func wholeCandidates(inv *structs.GPUInventory, holders map[string]string, taken map[string]bool, c *structs.GPUConstraint) []*structs.GPU {
	var out []*structs.GPU
	for _, g := range inv.Devices {
		if g.Unhealthy == "" && !g.MIGMode && g.UUID != "" && free(holders, taken, g.UUID) && matchGPU(c, g) &&
			!slices.ContainsFunc(out, func(o *structs.GPU) bool { return o.UUID == g.UUID }) {
			out = append(out, g)
		}
	}
	slices.SortStableFunc(out, func(a, b *structs.GPU) int { return a.Index - b.Index })
	return out
}

// migCandidates returns the agent's healthy free MIG instances of a
// profile matching c, by GPU index, then GPU instance, compute instance
// and UUID.
func migCandidates(inv *structs.GPUInventory, holders map[string]string, taken map[string]bool, profile string, c *structs.GPUConstraint) []*structs.MIGInstance {
	type cand struct {
		g *structs.GPU
		m *structs.MIGInstance
	}
	var cs []cand
	for _, g := range inv.Devices {
		if g.Unhealthy != "" || !g.MIGMode {
			continue
		}
		for _, m := range g.MIG {
			if m.Profile == profile && m.Unhealthy == "" && m.UUID != "" && free(holders, taken, m.UUID) && matchMIG(c, g, m) &&
				!slices.ContainsFunc(cs, func(o cand) bool { return o.m.UUID == m.UUID }) {
				cs = append(cs, cand{g, m})
			}
		}
	}
	slices.SortStableFunc(cs, func(a, b cand) int {
		if a.g.Index != b.g.Index {
			return a.g.Index - b.g.Index
		}
		if a.m.GIID != b.m.GIID {
			return a.m.GIID - b.m.GIID
		}
		if a.m.CIID != b.m.CIID {
			return a.m.CIID - b.m.CIID
		}
		return strings.Compare(a.m.UUID, b.m.UUID)
	})
	out := make([]*structs.MIGInstance, len(cs))
	for i, c := range cs {
		out[i] = c.m
	}
	return out
}

// DeviceFit checks whether agent a has the devices a kernel asking for res
// with constraint c needs, besides the UUIDs in taken (those chosen for
// other kernels of the same pass or apply). It returns "" when it has, else
// why not, e.g. `needs 4 GPUs (model "H100*", >= 40GiB): 2 free match on
// agent a1`. An agent that reports no GPU inventory is judged on its
// counted slots alone unless the kernel has a constraint.
func DeviceFit(a *structs.Agent, res structs.Slots, c *structs.GPUConstraint, taken map[string]bool) string {
	d, err := DemandOf(res)
	if err != nil {
		return err.Error()
	}
	reason, _ := demandFit(a, d, c, taken)
	return reason
}

// demandFit is DeviceFit for a parsed demand; when it does not fit, matched
// is how many free devices matched the part of it that failed.
func demandFit(a *structs.Agent, d GPUDemand, c *structs.GPUConstraint, taken map[string]bool) (reason string, matched int) {
	if d.Empty() {
		return "", 0
	}
	inv := a.GPUs
	if inv == nil {
		if c.Empty() {
			return "", 0
		}
		return fmt.Sprintf("%s: agent %s reports no GPU inventory", d.needs(c), a.ID), 0
	}
	if d.Whole > 0 {
		if n := len(wholeCandidates(inv, a.GPUHolders, taken, c)); n < d.Whole {
			return fmt.Sprintf("needs %s%s: %d free match on agent %s", plural(d.Whole, "GPU"), constraintText(c), n, a.ID), n
		}
	}
	for _, m := range d.MIG {
		if n := len(migCandidates(inv, a.GPUHolders, taken, m.Profile, c)); n < m.N {
			return fmt.Sprintf("needs %s %s%s: %d free match on agent %s", plural(m.N, "MIG instance"), m.Profile, constraintText(c), n, a.ID), n
		}
	}
	return "", 0
}

// needs words a whole demand: "needs 2 GPUs and 1 MIG instance 1g.10gb
// (model "H100*")".
func (d GPUDemand) needs(c *structs.GPUConstraint) string {
	var parts []string
	if d.Whole > 0 {
		parts = append(parts, plural(d.Whole, "GPU"))
	}
	for _, m := range d.MIG {
		parts = append(parts, plural(m.N, "MIG instance")+" "+m.Profile)
	}
	return "needs " + strings.Join(parts, " and ") + constraintText(c)
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

// constraintText writes a constraint as ` (model "H100*", >= 40GiB)`, or
// "" for none.
func constraintText(c *structs.GPUConstraint) string {
	if c.Empty() {
		return ""
	}
	var parts []string
	if c.Model != "" {
		parts = append(parts, fmt.Sprintf("model %q", c.Model))
	}
	if c.MinMemory > 0 {
		parts = append(parts, ">= "+structs.FormatBytes(c.MinMemory))
	}
	return " (" + strings.Join(parts, ", ") + ")"
}

// ChooseDevices picks the devices of a kernel asking for res with
// constraint c on agent a, besides those held (a.GPUHolders) and those in
// taken: for cuda.device=N, the N healthy whole GPUs (not in MIG mode) that
// match c with the most NVLinks among them, then the best common PCIe
// level, then on one NUMA node, then the lowest indices; for each
// cuda.mig-<profile>=N, the first N free healthy instances of the profile
// (by GPU index, GPU and compute instance). It returns the UUIDs, whole
// GPUs first, and the memory of the whole GPUs (what the kernel occupies of
// cuda.mem, in slot units). An agent without GPU inventory gets nothing
// chosen (its counted slots alone, see DeviceFit). The error says what is
// missing.
func ChooseDevices(a *structs.Agent, res structs.Slots, c *structs.GPUConstraint, taken map[string]bool) (uuids []string, mem structs.Quantity, err error) {
	d, err := DemandOf(res)
	if err != nil {
		return nil, 0, err
	}
	return chooseDemand(a, d, c, taken)
}

// chooseDemand is ChooseDevices for a parsed demand.
func chooseDemand(a *structs.Agent, d GPUDemand, c *structs.GPUConstraint, taken map[string]bool) (uuids []string, mem structs.Quantity, err error) {
	if reason, _ := demandFit(a, d, c, taken); reason != "" {
		return nil, 0, errors.New(reason)
	}
	if d.Empty() || a.GPUs == nil {
		return nil, 0, nil
	}
	if d.Whole > 0 {
		cands := wholeCandidates(a.GPUs, a.GPUHolders, taken, c)
		for _, g := range bestGPUSet(cands, d.Whole) {
			uuids = append(uuids, g.UUID)
			mem += structs.Whole(g.MemoryBytes)
		}
	}
	for _, m := range d.MIG {
		for _, inst := range migCandidates(a.GPUs, a.GPUHolders, taken, m.Profile, c)[:m.N] {
			uuids = append(uuids, inst.UUID)
		}
	}
	return uuids, mem, nil
}

// linkLevels ranks structs.GPULink levels, best (lowest) first; an unknown
// level ranks after all.
var linkLevels = map[string]int{
	structs.GPULinkInternal:   0,
	structs.GPULinkSingle:     1,
	structs.GPULinkMultiple:   2,
	structs.GPULinkHostBridge: 3,
	structs.GPULinkNode:       4,
	structs.GPULinkSystem:     5,
}

const unknownLevel = 6

// link returns how GPUs a and b connect, from either side's Links.
func link(a, b *structs.GPU) structs.GPULink {
	if l, ok := a.Links[b.UUID]; ok {
		return l
	}
	return b.Links[a.UUID]
}

// setScore compares candidate sets: more NVLinks, then a lower (better)
// worst PCIe level, then one NUMA node. Sets with equal scores go by
// their indices: the first enumerated (lowest) wins.
type setScore struct {
	nvlinks  int
	level    int
	sameNUMA bool
}

func (s setScore) better(o setScore) bool {
	if s.nvlinks != o.nvlinks {
		return s.nvlinks > o.nvlinks
	}
	if s.level != o.level {
		return s.level < o.level
	}
	return s.sameNUMA && !o.sameNUMA
}

// maxExhaustive bounds the candidate sets bestGPUSet compares one by one
// (16 choose 8 is 12870); beyond it, it grows a set greedily from each
// candidate.
const maxExhaustive = 20000

// bestGPUSet chooses n of cands (n <= len(cands), sorted by index) by
// setScore, then by lowest indices.
func bestGPUSet(cands []*structs.GPU, n int) []*structs.GPU {
	m := len(cands)
	if n >= m {
		return cands
	}
	if n == 1 {
		return cands[:1]
	}
	// Pairwise NVLinks and levels, and the NUMA nodes, as small arrays.
	nv := make([]int, m*m)
	lv := make([]int, m*m)
	numa := make([]int, m)
	for i, a := range cands {
		numa[i] = a.NUMANode
		for j, b := range cands {
			if i == j {
				continue
			}
			l := link(a, b)
			nv[i*m+j] = l.NVLinks
			if r, ok := linkLevels[l.Level]; ok {
				lv[i*m+j] = r
			} else {
				lv[i*m+j] = unknownLevel
			}
		}
	}
	score := func(set []int) setScore {
		s := setScore{sameNUMA: true}
		for x, i := range set {
			if x > 0 && (numa[i] != numa[set[0]] || numa[i] < 0) {
				s.sameNUMA = false
			}
			for _, j := range set[x+1:] {
				s.nvlinks += nv[i*m+j]
				s.level = max(s.level, lv[i*m+j])
			}
		}
		return s
	}
	var best []int
	var bestScore setScore
	if binomial(m, n) <= maxExhaustive {
		// Every n-subset in lexicographic order of indices, scored as it
		// grows; a later set replaces the best only when strictly better.
		// A branch that cannot reach the best set's NVLinks even if every
		// pair it adds had the most NVLinks of any pair is cut.
		maxNV := 0
		for _, x := range nv {
			maxNV = max(maxNV, x)
		}
		set := make([]int, 0, n)
		var grow func(start, nvSum, lvMax int, same bool)
		grow = func(start, nvSum, lvMax int, same bool) {
			k := len(set)
			if k == n {
				if s := (setScore{nvSum, lvMax, same}); best == nil || s.better(bestScore) {
					best, bestScore = slices.Clone(set), s
				}
				return
			}
			left := n - k
			if best != nil && nvSum+maxNV*(left*k+left*(left-1)/2) < bestScore.nvlinks {
				return
			}
			for c := start; c <= m-left; c++ {
				addNV, addLv := 0, lvMax
				for _, i := range set {
					addNV += nv[i*m+c]
					addLv = max(addLv, lv[i*m+c])
				}
				// One device is on one NUMA node; several are when all
				// are on the same known node.
				s := same && (k == 0 || (numa[c] >= 0 && numa[c] == numa[set[0]]))
				set = append(set, c)
				grow(c+1, nvSum+addNV, addLv, s)
				set = set[:k]
			}
		}
		grow(0, 0, 0, true)
	} else {
		// Greedy from each seed: add the candidate that adds the most
		// NVLinks to the set, then the best worst level, then the lowest
		// index; keep the best set grown.
		used := make([]bool, m)
		for seed := 0; seed < m; seed++ {
			clear(used)
			set := []int{seed}
			used[seed] = true
			for len(set) < n {
				pick, pickNV, pickLv := -1, 0, 0
				for c := 0; c < m; c++ {
					if used[c] {
						continue
					}
					addNV, addLv := 0, 0
					for _, i := range set {
						addNV += nv[i*m+c]
						addLv = max(addLv, lv[i*m+c])
					}
					if pick < 0 || addNV > pickNV || (addNV == pickNV && addLv < pickLv) {
						pick, pickNV, pickLv = c, addNV, addLv
					}
				}
				set = append(set, pick)
				used[pick] = true
			}
			slices.Sort(set)
			if s := score(set); best == nil || s.better(bestScore) || (!bestScore.better(s) && slices.Compare(set, best) < 0) {
				best, bestScore = set, s
			}
		}
	}
	out := make([]*structs.GPU, n)
	for i, c := range best {
		out[i] = cands[c]
	}
	return out
}

// binomial returns n choose k, saturating far above maxExhaustive.
func binomial(n, k int) int {
	if k > n-k {
		k = n - k
	}
	r := 1
	for i := 1; i <= k; i++ {
		hi, lo := bits.Mul64(uint64(r), uint64(n-k+i))
		if hi != 0 || lo > 1<<40 {
			return 1 << 40
		}
		r = int(lo) / i
	}
	return r
}

// deviceMiss is the agent whose devices came closest to what a pick
// needed: the most free matching devices of the part that failed (the
// first such agent in the selector's order).
type deviceMiss struct {
	reason  string
	matched int
}

// deviceAccept returns the test that an agent with room for the slots of
// kernels (their demands ds, one per kernel) also has their devices,
// disjoint, counting those the pass already chose there (v.taken). It
// notes the closest miss in p.devMiss.
func (p *pass) deviceAccept(kernels []*structs.Kernel, ds []GPUDemand) accept {
	return func(v *agentView) bool {
		_, reason, matched := v.chooseGPUs(kernels, ds, false)
		if reason == "" {
			return true
		}
		if p.devMiss.reason == "" || matched > p.devMiss.matched {
			p.devMiss = deviceMiss{reason: reason, matched: matched}
		}
		return false
	}
}

// deviceReason says why no agent with room for d's slots had its devices.
func (p *pass) deviceReason(g *groupView, d demand) string {
	return fmt.Sprintf("no agent in resource group %q has the GPU devices for %s: %s", g.name, d.what(), p.devMiss.reason)
}

// chooseGPUs chooses, one kernel after the other, the devices of kernels
// (demands ds, one per kernel) on v besides v.taken, disjoint. It returns
// them all, or why they do not fit and how many devices the failing
// kernel matched. Unless all is set, the last kernel's devices are only
// counted, not chosen (nothing comes after it that they could take from):
// enough to tell whether the kernels fit.
func (v *agentView) chooseGPUs(kernels []*structs.Kernel, ds []GPUDemand, all bool) (chosen []string, reason string, matched int) {
	taken := v.taken
	var local map[string]bool // v.taken plus what earlier kernels chose
	for i, k := range kernels {
		if ds[i].Empty() {
			continue
		}
		if !all && i == len(kernels)-1 {
			if reason, matched = demandFit(v.agent, ds[i], k.GPUConstraint, taken); reason != "" && len(kernels) > 1 {
				reason = fmt.Sprintf("kernel %s %s", kernelName(k), reason)
			}
			return chosen, reason, matched
		}
		uuids, _, err := chooseDemand(v.agent, ds[i], k.GPUConstraint, taken)
		if err != nil {
			_, matched = demandFit(v.agent, ds[i], k.GPUConstraint, taken)
			if len(kernels) > 1 {
				return nil, fmt.Sprintf("kernel %s %s", kernelName(k), err), matched
			}
			return nil, err.Error(), matched
		}
		chosen = append(chosen, uuids...)
		if len(uuids) > 0 && i < len(kernels)-1 {
			if local == nil {
				local = make(map[string]bool, len(v.taken)+len(uuids))
				for u := range v.taken {
					local[u] = true
				}
			}
			for _, u := range uuids {
				local[u] = true
			}
			taken = local
		}
	}
	return chosen, "", 0
}

// takeGPUs chooses the devices of kernels on v (which accepted them) and
// holds them in v.taken for the rest of the pass.
func (v *agentView) takeGPUs(kernels []*structs.Kernel, ds []GPUDemand) []string {
	chosen, _, _ := v.chooseGPUs(kernels, ds, true)
	if len(chosen) > 0 && v.taken == nil {
		v.taken = map[string]bool{}
	}
	for _, u := range chosen {
		v.taken[u] = true
	}
	return chosen
}

// untakeGPUs gives back devices takeGPUs held.
func (v *agentView) untakeGPUs(uuids []string) {
	for _, u := range uuids {
		delete(v.taken, u)
	}
}
