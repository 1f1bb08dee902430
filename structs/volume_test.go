package structs

import "testing"

func TestParseVolumeRef(t *testing.T) {
	for in, want := range map[string]*VolumeRef{
		"data:/home/work/data":  {Volume: "data", Target: "/home/work/data"},
		"data:/d:ro":            {Volume: "data", Target: "/d", ReadOnly: true},
		"data:/d:rw":            {Volume: "data", Target: "/d"},
		"alice/data:/d:ro":      {Volume: "alice/data", Target: "/d", ReadOnly: true},
		"data":                  nil, // no path
		"data:relative":         nil,
		"data:/":                nil,
		"data:/d:rx":            nil,
		"../x:/d":               nil,
		"a/b/c:/d":              nil,
		"data:/d:ro:extra":      nil,
		"-bad:/d":               nil,
		"alice/:/d":             nil,
		"data:/d\x00":           nil,
		"data.v2_x-1:/mnt/x/..": {Volume: "data.v2_x-1", Target: "/mnt/x/.."}, // the server cleans it
	} {
		got, err := ParseVolumeRef(in)
		if want == nil {
			if err == nil {
				t.Errorf("%q parsed as %+v, want an error", in, got)
			}
			continue
		}
		if err != nil || got != *want {
			t.Errorf("%q = %+v, %v; want %+v", in, got, err, *want)
		}
	}
}

func TestVolumeAccess(t *testing.T) {
	v := &Volume{ID: "alice/data", Name: "data", Owner: "alice"}
	v.Share("carol", false)
	v.Share("bob", true)
	v.Share("bob", false) // replaces bob's share
	v.Share("bob", true)
	if len(v.Shares) != 2 || v.Shares[0].User != "bob" || v.Shares[1].User != "carol" {
		t.Fatalf("shares = %+v, want bob and carol, sorted, once each", v.Shares)
	}
	for user, want := range map[string][2]bool{"alice": {true, false}, "bob": {true, true}, "carol": {true, false}, "dave": {false, false}} {
		ok, ro := v.Access(user)
		if ok != want[0] || ro != want[1] {
			t.Errorf("Access(%s) = %v, %v; want %v", user, ok, ro, want)
		}
	}
	if !v.Unshare("bob") || v.Unshare("bob") {
		t.Fatal("Unshare must report whether there was a share")
	}
	if ok, _ := v.Access("bob"); ok {
		t.Fatal("bob keeps access after unshare")
	}
	if v.Dir() != "alice/data" {
		t.Fatalf("Dir = %q", v.Dir())
	}
}
