package authtest

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"
)

// Clock is a settable clock for tests; its Now method fits every Now option
// of this package and of authbridge.
type Clock struct {
	mu sync.Mutex
	t  time.Time
}

// NewClock returns a Clock showing t.
func NewClock(t time.Time) *Clock { return &Clock{t: t} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// Access is one grant of a token: actions on a repository.
type Access struct {
	Type    string   `json:"type"` // "repository"
	Name    string   `json:"name"`
	Actions []string `json:"actions"`
}

// Claims is the content of a token issued by TokenServer.
type Claims struct {
	Subject  string   `json:"sub"` // user name, "" for anonymous
	Audience string   `json:"aud"` // the service
	IssuedAt int64    `json:"iat"` // Unix nanoseconds
	Expiry   int64    `json:"exp"` // Unix nanoseconds
	Access   []Access `json:"access"`
	ID       string   `json:"jti"`
}

// Allows reports whether c grants action on repository name.
func (c Claims) Allows(name, action string) bool {
	for _, a := range c.Access {
		if a.Type != "repository" || a.Name != name {
			continue
		}
		for _, act := range a.Actions {
			if act == action || act == "*" {
				return true
			}
		}
	}
	return false
}

// ErrBadToken is returned by VerifyToken for tokens that are malformed or
// carry a wrong signature.
var ErrBadToken = errors.New("authtest: bad token")

var b64 = base64.RawURLEncoding

// SignToken encodes c as "<payload>.<HMAC-SHA256 signature>".
func SignToken(key []byte, c Claims) string {
	payload, err := json.Marshal(c)
	if err != nil {
		panic(fmt.Sprintf("authtest: encoding claims: %v", err)) // Claims always encode
	}
	p := b64.EncodeToString(payload)
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(p))
	return p + "." + b64.EncodeToString(mac.Sum(nil))
}

// VerifyToken checks the signature of a token made by SignToken and returns
// its claims. It does not check expiry or audience.
func VerifyToken(key []byte, tok string) (Claims, error) {
	p, sig, ok := strings.Cut(tok, ".")
	if !ok {
		return Claims{}, fmt.Errorf("%w: no signature", ErrBadToken)
	}
	got, err := b64.DecodeString(sig)
	if err != nil {
		return Claims{}, fmt.Errorf("%w: signature encoding", ErrBadToken)
	}
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(p))
	if !hmac.Equal(got, mac.Sum(nil)) {
		return Claims{}, fmt.Errorf("%w: signature mismatch", ErrBadToken)
	}
	raw, err := b64.DecodeString(p)
	if err != nil {
		return Claims{}, fmt.Errorf("%w: payload encoding", ErrBadToken)
	}
	var c Claims
	if err := json.Unmarshal(raw, &c); err != nil {
		return Claims{}, fmt.Errorf("%w: payload: %v", ErrBadToken, err)
	}
	return c, nil
}

// randomKey returns a fresh HMAC key.
func randomKey() []byte {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		panic(fmt.Sprintf("authtest: random key: %v", err)) // crypto/rand does not fail on Linux
	}
	return k
}

// randomID returns a random token id.
func randomID() string {
	return b64.EncodeToString(randomKey()[:12])
}
