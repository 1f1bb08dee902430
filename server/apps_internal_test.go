package server

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/corral-dev/corral/server/state"
	"github.com/corral-dev/corral/structs"
)

// TestAppTokens: a signed app token verifies until it expires, for a key
// that is not revoked; any change to it is refused.
func TestAppTokens(t *testing.T) {
	st, err := state.New()
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	if err := st.UpsertConfig(1, &structs.ConfigUpsertRequest{
		Users: []*structs.User{{Name: "alice"}},
		Keys:  []*structs.AccessKey{{AccessKey: "AKALICE", SecretHash: "x", User: "alice"}, {AccessKey: "AKGONE", SecretHash: "y", User: "alice", Revoked: true}},
		Time:  now,
	}); err != nil {
		t.Fatal(err)
	}
	s := &Server{state: st}
	tok := s.signAppToken(&appToken{Session: "s1", App: "web", AccessKey: "AKALICE", Expires: now.Add(time.Minute).Unix()})
	got, id, err := s.verifyAppToken(tok, now)
	if err != nil || got.Session != "s1" || got.App != "web" || id.key.User != "alice" {
		t.Fatalf("verify: %+v, %v", got, err)
	}
	if _, _, err := s.verifyAppToken(tok, now.Add(2*time.Minute)); err != errBadAppToken {
		t.Errorf("expired token: %v", err)
	}
	p, sig, _ := strings.Cut(tok, ".")
	forged := s.signAppToken(&appToken{Session: "s2", App: "web", AccessKey: "AKALICE", Expires: now.Add(time.Minute).Unix()})
	fp, _, _ := strings.Cut(forged, ".")
	for name, bad := range map[string]string{
		"payload of another token": fp + "." + sig,
		"no signature":             p,
		"truncated signature":      p + "." + sig[:10],
		"garbage":                  "!!!.???",
	} {
		if _, _, err := s.verifyAppToken(bad, now); err != errBadAppToken {
			t.Errorf("%s: %v", name, err)
		}
	}
	revoked := s.signAppToken(&appToken{Session: "s1", App: "web", AccessKey: "AKGONE", Expires: now.Add(time.Minute).Unix()})
	if _, _, err := s.verifyAppToken(revoked, now); err != errBadAppToken {
		t.Errorf("token of a revoked key: %v", err)
	}
	// Another cluster (another key) does not accept it.
	other := &Server{state: st}
	other.apps.keyOnce.Do(func() { other.apps.key = []byte("another cluster's key") })
	if _, _, err := other.verifyAppToken(tok, now); err != errBadAppToken {
		t.Errorf("token from another cluster: %v", err)
	}
}

func TestCheckServicePorts(t *testing.T) {
	got, err := checkServicePorts([]structs.ServicePort{{Name: "web", Port: 80, Source: "image"}})
	if err != nil || len(got) != 1 || got[0].Protocol != "http" || got[0].Source != "" {
		t.Fatalf("got %+v, %v", got, err)
	}
	_, err = checkServicePorts([]structs.ServicePort{{Name: "web", Port: 80}, {Name: "web", Port: 81}})
	if code, msg := errorStatus(err); code != http.StatusBadRequest || !strings.Contains(msg, "service_ports: app web is declared twice") {
		t.Errorf("duplicate: %d %q", code, msg)
	}
}

func TestDropCookie(t *testing.T) {
	r, _ := http.NewRequest(http.MethodGet, "http://x/", nil)
	r.Header.Set("Cookie", "a=1; corral_app=secret; b=2")
	dropCookie(r, "corral_app")
	if got := r.Header.Get("Cookie"); got != "a=1; b=2" {
		t.Errorf("Cookie %q", got)
	}
}

// TestAppConnectionIsActivity: an open app connection marks its session
// active when it opens and when it closes.
func TestAppConnectionIsActivity(t *testing.T) {
	s := &Server{}
	before := time.Now().UTC()
	stop := s.touchWhileOpen("s1")
	if got := s.activity.get("s1"); got.Before(before) {
		t.Fatalf("activity %v after opening, want at least %v", got, before)
	}
	mid := time.Now().UTC()
	stop()
	if got := s.activity.get("s1"); got.Before(mid) {
		t.Fatalf("activity %v after closing, want at least %v", got, mid)
	}
}
