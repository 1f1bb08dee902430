package structs

import (
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
)

// Quantity is an exact amount of one resource slot, stored in thousandths
// so that fractional CPUs add and subtract without rounding drift.
type Quantity int64

// QuantityScale is the number of Quantity units in one whole slot unit.
const QuantityScale = 1000

// Whole returns q for a whole number of units (n cores, n bytes, n GPUs).
func Whole(n int64) Quantity { return Quantity(n * QuantityScale) }

// Float returns q as a float64 in slot units.
func (q Quantity) Float() float64 { return float64(q) / QuantityScale }

// String formats q as a decimal with at most three fractional digits.
func (q Quantity) String() string {
	neg := q < 0
	if neg {
		q = -q
	}
	s := strconv.FormatInt(int64(q)/QuantityScale, 10)
	if frac := int64(q) % QuantityScale; frac != 0 {
		s += "." + strings.TrimRight(fmt.Sprintf("%03d", frac), "0")
	}
	if neg {
		s = "-" + s
	}
	return s
}

// MarshalJSON writes q as a plain JSON number in slot units.
func (q Quantity) MarshalJSON() ([]byte, error) { return []byte(q.String()), nil }

// UnmarshalJSON reads a JSON number (or a numeric string) in slot units.
func (q *Quantity) UnmarshalJSON(b []byte) error {
	s := strings.Trim(string(b), `"`)
	v, err := ParseQuantity(s)
	if err != nil {
		return err
	}
	*q = v
	return nil
}

// ParseQuantity parses a decimal number of slot units such as "2" or "0.5".
func ParseQuantity(s string) (Quantity, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, fmt.Errorf("empty quantity")
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return 0, fmt.Errorf("invalid quantity %q: want a decimal number", s)
	}
	if math.Abs(f) > float64(math.MaxInt64/QuantityScale/2) {
		return 0, fmt.Errorf("quantity %q is out of range", s)
	}
	return Quantity(math.Round(f * QuantityScale)), nil
}

// ParseBytes parses a memory size such as "256M", "1.5G", "1Gi" or "1048576"
// (binary multiples: K=1024) and returns it as a Quantity of bytes.
func ParseBytes(s string) (Quantity, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, fmt.Errorf("empty size")
	}
	mult := 1.0
	upper := strings.ToUpper(s)
	for _, suf := range []struct {
		s string
		m float64
	}{{"KIB", 1 << 10}, {"MIB", 1 << 20}, {"GIB", 1 << 30}, {"TIB", 1 << 40},
		{"KI", 1 << 10}, {"MI", 1 << 20}, {"GI", 1 << 30}, {"TI", 1 << 40},
		{"KB", 1 << 10}, {"MB", 1 << 20}, {"GB", 1 << 30}, {"TB", 1 << 40},
		{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"T", 1 << 40}, {"B", 1}} {
		if strings.HasSuffix(upper, suf.s) {
			mult = suf.m
			upper = strings.TrimSuffix(upper, suf.s)
			break
		}
	}
	f, err := strconv.ParseFloat(strings.TrimSpace(upper), 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return 0, fmt.Errorf("invalid size %q: want a number with an optional K, M, G or T suffix", s)
	}
	b := f * mult
	if b > 1<<50 || b < -(1<<50) {
		return 0, fmt.Errorf("size %q is out of range", s)
	}
	return Whole(int64(math.Round(b))), nil
}

// Well-known slot names. Device plugins may add others.
const (
	SlotCPU        = "cpu"         // cores, fractional allowed
	SlotMem        = "mem"         // bytes
	SlotCUDADevice = "cuda.device" // whole GPUs
)

// Per-kernel limits: enforced by the drivers on each kernel, never
// counted against an agent's capacity by the scheduler (see Kernel.Limits).
const (
	LimitPids = "pids" // processes and threads of the kernel
	LimitDisk = "disk" // bytes the kernel may write to its scratch space
)

// Slots maps a slot name to a quantity: the generic resource vector used for
// capacity, occupancy, requests and limits.
type Slots map[string]Quantity

// Copy returns an independent copy of s.
func (s Slots) Copy() Slots {
	out := make(Slots, len(s))
	for k, v := range s {
		out[k] = v
	}
	return out
}

// Add returns s + o.
func (s Slots) Add(o Slots) Slots {
	out := s.Copy()
	for k, v := range o {
		out[k] += v
	}
	return out
}

// Sub returns s - o. Slots that reach zero are removed.
func (s Slots) Sub(o Slots) Slots {
	out := s.Copy()
	for k, v := range o {
		out[k] -= v
		if out[k] == 0 {
			delete(out, k)
		}
	}
	return out
}

// Fits reports whether req fits into free (capacity minus occupied) for every
// slot req asks for; short names the first slot that does not fit.
func Fits(capacity, occupied, req Slots) (ok bool, short string) {
	for _, k := range req.Names() {
		if req[k] <= 0 {
			continue
		}
		if capacity[k]-occupied[k] < req[k] {
			return false, k
		}
	}
	return true, ""
}

// Names returns the slot names of s in sorted order.
func (s Slots) Names() []string {
	names := make([]string, 0, len(s))
	for k := range s {
		names = append(names, k)
	}
	sort.Strings(names)
	return names
}

// AnyNegative reports whether some slot of s is below zero.
func (s Slots) AnyNegative() bool {
	for _, v := range s {
		if v < 0 {
			return true
		}
	}
	return false
}

// Equal reports whether s and o hold the same non-zero quantities.
func (s Slots) Equal(o Slots) bool {
	for k, v := range s {
		if o[k] != v {
			return false
		}
	}
	for k, v := range o {
		if s[k] != v {
			return false
		}
	}
	return true
}

// String formats s as "cpu=1 mem=256MiB".
func (s Slots) String() string {
	parts := make([]string, 0, len(s))
	for _, k := range s.Names() {
		if k == SlotMem {
			parts = append(parts, k+"="+FormatBytes(s[k]))
			continue
		}
		parts = append(parts, k+"="+s[k].String())
	}
	return strings.Join(parts, " ")
}

// FormatBytes formats a byte quantity with a binary unit (KiB, MiB, GiB).
func FormatBytes(q Quantity) string {
	b := q.Float()
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	i := 0
	for b >= 1024 && i < len(units)-1 {
		b /= 1024
		i++
	}
	if b == math.Trunc(b) {
		return fmt.Sprintf("%.0f%s", b, units[i])
	}
	return fmt.Sprintf("%.1f%s", b, units[i])
}

// MarshalJSON keeps the slot map's JSON stable (sorted keys come from encoding/json).
func (s Slots) MarshalJSON() ([]byte, error) {
	return json.Marshal(map[string]Quantity(s))
}
