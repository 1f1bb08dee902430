package structs

import (
	"encoding/json"
	"testing"
)

func TestParseQuantity(t *testing.T) {
	tests := []struct {
		in      string
		want    Quantity
		wantErr bool
	}{
		{"0.5", 500, false},
		{"2", 2000, false},
		{" 2 ", 2000, false},
		{"0", 0, false},
		{"0.001", 1, false},
		{"0.1", 100, false},
		{"1.25", 1250, false},
		{"-1", -1000, false}, // negative quantities parse; request validation rejects them
		{"-0.5", -500, false},
		{"abc", 0, true},
		{"", 0, true},
		{"1e400", 0, true},
		{"-1e400", 0, true},
		{"NaN", 0, true},
		{"Inf", 0, true},
		{"1e16", 0, true},
		{"2 cores", 0, true},
	}
	for _, tt := range tests {
		got, err := ParseQuantity(tt.in)
		if tt.wantErr {
			if err == nil {
				t.Errorf("ParseQuantity(%q) = %v, want an error", tt.in, got)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseQuantity(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
		}
	}
}

func TestParseBytes(t *testing.T) {
	tests := []struct {
		in      string
		bytes   int64
		wantErr bool
	}{
		{"256M", 256 << 20, false},
		{"256MiB", 256 << 20, false},
		{"256mb", 256 << 20, false},
		{"1.5G", 3 << 29, false},
		{"1Gi", 1 << 30, false},
		{"1GiB", 1 << 30, false},
		{"2T", 2 << 40, false},
		{"4K", 4096, false},
		{"1024", 1024, false},
		{"1024B", 1024, false},
		{"0", 0, false},
		{"12X", 0, true},
		{"G", 0, true},
		{"", 0, true},
		{"abc", 0, true},
		{"1e400", 0, true},
		{"2000T", 0, true},
	}
	for _, tt := range tests {
		got, err := ParseBytes(tt.in)
		if tt.wantErr {
			if err == nil {
				t.Errorf("ParseBytes(%q) = %v, want an error", tt.in, got)
			}
			continue
		}
		if err != nil || got != Whole(tt.bytes) {
			t.Errorf("ParseBytes(%q) = %d, %v; want %d bytes (%d)", tt.in, got, err, tt.bytes, Whole(tt.bytes))
		}
	}
}

func TestQuantityString(t *testing.T) {
	tests := []struct {
		q    Quantity
		want string
	}{
		{1500, "1.5"},
		{0, "0"},
		{1, "0.001"},
		{10, "0.01"},
		{1000, "1"},
		{1250, "1.25"},
		{-1500, "-1.5"},
		{-500, "-0.5"},
		{Whole(1 << 30), "1073741824"},
	}
	for _, tt := range tests {
		if got := tt.q.String(); got != tt.want {
			t.Errorf("Quantity(%d).String() = %q, want %q", int64(tt.q), got, tt.want)
		}
		back, err := ParseQuantity(tt.want)
		if err != nil || back != tt.q {
			t.Errorf("ParseQuantity(%q) = %d, %v; want %d", tt.want, back, err, tt.q)
		}
	}
	if got := Whole(3).Float(); got != 3 {
		t.Errorf("Whole(3).Float() = %v", got)
	}
}

func TestQuantityJSON(t *testing.T) {
	for _, q := range []Quantity{0, 1, 500, 1500, -1500, Whole(64), Whole(1 << 40)} {
		b, err := json.Marshal(q)
		if err != nil {
			t.Fatal(err)
		}
		var back Quantity
		if err := json.Unmarshal(b, &back); err != nil || back != q {
			t.Errorf("round trip of %d via %s = %d, %v", q, b, back, err)
		}
	}
	if b, _ := json.Marshal(Quantity(1500)); string(b) != "1.5" {
		t.Errorf("Marshal(1500) = %s, want 1.5", b)
	}
	var q Quantity
	if err := json.Unmarshal([]byte(`"0.25"`), &q); err != nil || q != 250 {
		t.Errorf(`Unmarshal("0.25") = %d, %v`, q, err)
	}
	if err := json.Unmarshal([]byte(`"abc"`), &q); err == nil {
		t.Error(`Unmarshal("abc") succeeded`)
	}
	if err := json.Unmarshal([]byte(`true`), &q); err == nil {
		t.Error(`Unmarshal(true) succeeded`)
	}

	s := Slots{SlotCPU: 1500, SlotMem: Whole(256 << 20), SlotCUDADevice: Whole(2), "cuda.mig-1g.10gb": Whole(1)}
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"cpu":1.5,"cuda.device":2,"cuda.mig-1g.10gb":1,"mem":268435456}`; string(b) != want {
		t.Errorf("Marshal(slots) = %s, want %s", b, want)
	}
	var back Slots
	if err := json.Unmarshal(b, &back); err != nil || !back.Equal(s) {
		t.Errorf("slots round trip = %v, %v; want %v", back, err, s)
	}
	type wrap struct {
		R Slots `json:"r"`
	}
	var w wrap
	if err := json.Unmarshal([]byte(`{"r":{"cpu":"0.5","mem":1024}}`), &w); err != nil || !w.R.Equal(Slots{SlotCPU: 500, SlotMem: Whole(1024)}) {
		t.Errorf("Unmarshal(wrapped slots) = %v, %v", w.R, err)
	}
}

func TestSlotsArithmetic(t *testing.T) {
	tests := []struct {
		name       string
		a, b       Slots
		sum, delta Slots // a+b, a-b
	}{
		{"disjoint", Slots{SlotCPU: 1000}, Slots{SlotMem: 5}, Slots{SlotCPU: 1000, SlotMem: 5}, Slots{SlotCPU: 1000, SlotMem: -5}},
		{"same", Slots{SlotCPU: 1500}, Slots{SlotCPU: 1500}, Slots{SlotCPU: 3000}, Slots{}},
		{"nil left", nil, Slots{SlotCPU: 1}, Slots{SlotCPU: 1}, Slots{SlotCPU: -1}},
		{"nil right", Slots{SlotCPU: 1}, nil, Slots{SlotCPU: 1}, Slots{SlotCPU: 1}},
		{"both nil", nil, nil, Slots{}, Slots{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var aBefore, bBefore Slots
			if tt.a != nil {
				aBefore = tt.a.Copy()
			}
			if tt.b != nil {
				bBefore = tt.b.Copy()
			}
			if got := tt.a.Add(tt.b); !got.Equal(tt.sum) {
				t.Errorf("%v + %v = %v, want %v", tt.a, tt.b, got, tt.sum)
			}
			if got := tt.a.Sub(tt.b); !got.Equal(tt.delta) {
				t.Errorf("%v - %v = %v, want %v", tt.a, tt.b, got, tt.delta)
			}
			if !tt.a.Equal(aBefore) || !tt.b.Equal(bBefore) {
				t.Errorf("Add/Sub modified their operands: %v %v", tt.a, tt.b)
			}
		})
	}
}

func TestSlotsAddSubExact(t *testing.T) {
	tenth, err := ParseQuantity("0.1")
	if err != nil {
		t.Fatal(err)
	}
	step := Slots{SlotCPU: tenth, SlotMem: Whole(1)}
	s := Slots{}
	for range 10 {
		s = s.Add(step)
	}
	if want := (Slots{SlotCPU: Whole(1), SlotMem: Whole(10)}); !s.Equal(want) {
		t.Fatalf("ten times 0.1 cpu = %v, want %v", s, want)
	}
	for range 10 {
		s = s.Sub(step)
	}
	if len(s) != 0 {
		t.Fatalf("after subtracting it all back: %v (len %d), want exactly empty", s, len(s))
	}
	if s.AnyNegative() {
		t.Fatal("empty slots report a negative slot")
	}
	if s = s.Sub(step); !s.AnyNegative() {
		t.Fatalf("%v: AnyNegative() = false", s)
	}
}

func TestSlotsEqual(t *testing.T) {
	tests := []struct {
		a, b Slots
		want bool
	}{
		{nil, nil, true},
		{nil, Slots{}, true},
		{Slots{SlotCPU: 0}, nil, true}, // zero slots are as good as absent
		{Slots{SlotCPU: 1}, Slots{SlotCPU: 1}, true},
		{Slots{SlotCPU: 1}, Slots{SlotCPU: 2}, false},
		{Slots{SlotCPU: 1}, Slots{SlotCPU: 1, SlotMem: 1}, false},
		{Slots{SlotMem: 1}, Slots{SlotCPU: 1}, false},
	}
	for _, tt := range tests {
		if got := tt.a.Equal(tt.b); got != tt.want {
			t.Errorf("%v.Equal(%v) = %v, want %v", tt.a, tt.b, got, tt.want)
		}
		if got := tt.b.Equal(tt.a); got != tt.want {
			t.Errorf("%v.Equal(%v) = %v, want %v", tt.b, tt.a, got, tt.want)
		}
	}
}

func TestFits(t *testing.T) {
	capacity := Slots{SlotCPU: Whole(4), SlotMem: Whole(8 << 30), SlotCUDADevice: Whole(1)}
	tests := []struct {
		name      string
		occupied  Slots
		req       Slots
		ok        bool
		shortSlot string
	}{
		{"empty request", nil, nil, true, ""},
		{"exact fit", nil, Slots{SlotCPU: Whole(4), SlotMem: Whole(8 << 30), SlotCUDADevice: Whole(1)}, true, ""},
		{"fractional fit", Slots{SlotCPU: 3500}, Slots{SlotCPU: 500}, true, ""},
		{"fractional short", Slots{SlotCPU: 3501}, Slots{SlotCPU: 500}, false, SlotCPU},
		{"cpu short", Slots{SlotCPU: Whole(3)}, Slots{SlotCPU: Whole(2)}, false, SlotCPU},
		{"mem short", Slots{SlotMem: Whole(8 << 30)}, Slots{SlotCPU: Whole(1), SlotMem: Whole(1)}, false, SlotMem},
		{"unknown slot", nil, Slots{"cuda.mig-1g.10gb": Whole(1)}, false, "cuda.mig-1g.10gb"},
		{"first short in name order", Slots{SlotCPU: Whole(4), SlotMem: Whole(8 << 30)}, Slots{SlotCPU: 1, SlotMem: 1}, false, SlotCPU},
		{"zero request of missing slot", nil, Slots{"tpu": 0}, true, ""},
		{"negative request ignored", nil, Slots{"tpu": -1}, true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ok, short := Fits(capacity, tt.occupied, tt.req)
			if ok != tt.ok || short != tt.shortSlot {
				t.Errorf("Fits(%v, %v, %v) = %v, %q; want %v, %q", capacity, tt.occupied, tt.req, ok, short, tt.ok, tt.shortSlot)
			}
		})
	}
}

func TestSlotsString(t *testing.T) {
	tests := []struct {
		s    Slots
		want string
	}{
		{Slots{}, ""},
		{Slots{SlotCPU: 1500, SlotMem: Whole(256 << 20)}, "cpu=1.5 mem=256MiB"},
		{Slots{SlotMem: Whole(3 << 29), SlotCUDADevice: Whole(2)}, "cuda.device=2 mem=1.5GiB"},
		{Slots{SlotMem: Whole(100)}, "mem=100B"},
	}
	for _, tt := range tests {
		if got := tt.s.String(); got != tt.want {
			t.Errorf("String() = %q, want %q", got, tt.want)
		}
	}
}
