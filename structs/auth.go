package structs

import "time"

// User is a person or service that owns access keys.
type User struct {
	Name        string    `json:"name"`
	Admin       bool      `json:"admin"`
	CreatedAt   time.Time `json:"created_at"`
	CreateIndex uint64    `json:"create_index"`
	ModifyIndex uint64    `json:"modify_index"`
}

// AccessKey is an API credential. The secret is never stored: only its
// SHA-256, compared in constant time. A bearer token is "<access key>.<secret>".
type AccessKey struct {
	AccessKey  string `json:"access_key"`
	SecretHash string `json:"secret_hash,omitempty"`
	User       string `json:"user"`
	Admin      bool   `json:"admin"`
	// Policy names the ResourcePolicy that caps the key's sessions ("" = unlimited).
	Policy string `json:"policy,omitempty"`
	// AllowedGroups lists the resource groups the key may use (empty: "default").
	AllowedGroups []string  `json:"allowed_groups,omitempty"`
	Revoked       bool      `json:"revoked,omitempty"`
	CreatedAt     time.Time `json:"created_at"`
	CreateIndex   uint64    `json:"create_index"`
	ModifyIndex   uint64    `json:"modify_index"`
}

// Copy returns a deep copy of k.
func (k *AccessKey) Copy() *AccessKey {
	c := *k
	c.AllowedGroups = append([]string(nil), k.AllowedGroups...)
	return &c
}

// MayUseGroup reports whether the key may run sessions in group g.
func (k *AccessKey) MayUseGroup(g string) bool {
	if k.Admin {
		return true
	}
	if len(k.AllowedGroups) == 0 {
		return g == DefaultResourceGroup
	}
	for _, a := range k.AllowedGroups {
		if a == g {
			return true
		}
	}
	return false
}
