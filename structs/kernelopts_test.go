package structs

import (
	"strings"
	"testing"
)

func TestParseUlimit(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Ulimit
		err  string
	}{
		{"memlock=unlimited", Ulimit{"memlock", -1, -1}, ""},
		{"nofile=1024:65536", Ulimit{"nofile", 1024, 65536}, ""},
		{"NOFILE=4096", Ulimit{"nofile", 4096, 4096}, ""},
		{"stack=8388608:unlimited", Ulimit{"stack", 8388608, -1}, ""},
		{"nofile=65536:1024", Ulimit{}, "soft limit above the hard limit"},
		{"memlock=unlimited:1024", Ulimit{}, "soft limit above the hard limit"},
		{"bogus=1", Ulimit{}, "unknown ulimit"},
		{"nofile", Ulimit{}, "want name=soft[:hard]"},
		{"nofile=lots", Ulimit{}, "not a whole number"},
		{"nofile=-5", Ulimit{}, "not a whole number"},
	} {
		got, err := ParseUlimit(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: error %v, want one containing %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%q: %+v %v, want %+v", tc.in, got, err, tc.want)
		}
		if back, err := ParseUlimit(FormatUlimit(got)); err != nil || back != got {
			t.Errorf("%q: FormatUlimit round trip gave %+v %v", tc.in, back, err)
		}
	}
}

func TestNormalizeCapability(t *testing.T) {
	for in, want := range map[string]string{"IPC_LOCK": "CAP_IPC_LOCK", "cap_sys_ptrace": "CAP_SYS_PTRACE", " sys_nice ": "CAP_SYS_NICE"} {
		if got, err := NormalizeCapability(in); err != nil || got != want {
			t.Errorf("%q: %q %v, want %q", in, got, err, want)
		}
	}
	if _, err := NormalizeCapability("CAP_FLY"); err == nil || !strings.Contains(err.Error(), "CAP_IPC_LOCK") {
		t.Errorf("unknown capability: %v, want an error listing the known ones", err)
	}
}
