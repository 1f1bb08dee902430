package server

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/structs"
)

// identity is the authenticated caller of an API request.
type identity struct {
	key *structs.AccessKey
}

func (id *identity) admin() bool { return id.key.Admin }

type identityKey struct{}

func withIdentity(ctx context.Context, id *identity) context.Context {
	return context.WithValue(ctx, identityKey{}, id)
}

func callerOf(ctx context.Context) *identity {
	id, _ := ctx.Value(identityKey{}).(*identity)
	return id
}

// HashSecret returns the stored form of a key's secret.
func HashSecret(secret string) string {
	h := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(h[:])
}

// NewCredentials makes a fresh access key and secret; the token a client
// sends is "<access key>.<secret>".
func NewCredentials() (accessKey, secret string) {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	accessKey = "AK" + strings.ToUpper(hex.EncodeToString(b))
	s := make([]byte, 24)
	_, _ = rand.Read(s)
	return accessKey, hex.EncodeToString(s)
}

var errUnauthenticated = &httpError{code: http.StatusUnauthorized, msg: "missing or invalid credentials: send 'Authorization: Bearer <token>' (the CLI reads CORRAL_TOKEN)"}

// authenticate checks a request's bearer token against the access keys.
func (s *Server) authenticate(r *http.Request) (*identity, error) {
	token, ok := bearerToken(r)
	if !ok {
		return nil, errUnauthenticated
	}
	ak, secret, ok := strings.Cut(strings.TrimSpace(token), ".")
	if !ok || ak == "" || secret == "" {
		return nil, errUnauthenticated
	}
	key, err := s.state.Snapshot().Key(ak)
	if err != nil || key.Revoked {
		return nil, errUnauthenticated
	}
	if subtle.ConstantTimeCompare([]byte(HashSecret(secret)), []byte(key.SecretHash)) != 1 {
		return nil, errUnauthenticated
	}
	return &identity{key: key}, nil
}

// bearerToken is the request's token: the Authorization header's, or, on
// a WebSocket upgrade without that header, the api.WSTokenProtocolPrefix
// subprotocol's (browsers cannot set headers on a WebSocket).
func bearerToken(r *http.Request) (string, bool) {
	if h := r.Header.Get("Authorization"); h != "" {
		return strings.CutPrefix(h, "Bearer ")
	}
	if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
		return "", false
	}
	for _, v := range r.Header.Values("Sec-WebSocket-Protocol") {
		for _, p := range strings.Split(v, ",") {
			if tok, ok := strings.CutPrefix(strings.TrimSpace(p), api.WSTokenProtocolPrefix); ok {
				return tok, true
			}
		}
	}
	return "", false
}

var errAdminOnly = &httpError{code: http.StatusForbidden, msg: "this needs an admin key"}

// bootstrapAdmin creates the first admin user and key when the cluster has
// none, and hands the token to Config.OnBootstrapToken: the only time the
// secret is ever visible.
func (s *Server) bootstrapAdmin() {
	keys, err := s.state.Snapshot().Keys()
	if err != nil || len(keys) > 0 {
		return
	}
	ak, secret := NewCredentials()
	now := time.Now().UTC()
	req := &structs.ConfigUpsertRequest{
		Users: []*structs.User{{Name: "admin", Admin: true}},
		Keys:  []*structs.AccessKey{{AccessKey: ak, SecretHash: HashSecret(secret), User: "admin", Admin: true}},
		Time:  now,
	}
	if _, _, err := s.apply(structs.ConfigUpsertRequestType, req); err != nil {
		s.logger.Error("creating the admin key failed", "error", err)
		return
	}
	token := ak + "." + secret
	s.logger.Info("created the first admin key", "access_key", ak)
	if s.cfg.OnBootstrapToken != nil {
		s.cfg.OnBootstrapToken(token)
	} else {
		fmt.Printf("export CORRAL_TOKEN=%s\n", token)
	}
}
