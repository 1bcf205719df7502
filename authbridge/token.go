package authbridge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Token timing rules.
const (
	// DefaultExpiresIn is the lifetime of a token whose answer has no (or a
	// non-positive) expires_in, as the distribution token spec prescribes.
	DefaultExpiresIn = 60 * time.Second
	// MinRefreshMargin is the least validity a token must have left for a new
	// request to start with it.
	MinRefreshMargin = 10 * time.Second
	// RefreshMarginFraction is the fraction of its lifetime a token must have
	// left for a new request to start with it, when that is more than
	// MinRefreshMargin.
	RefreshMarginFraction = 0.2
	// MaxTokenLifetime caps the lifetime a token server may claim: a token
	// said to live longer is refreshed after a day all the same. It also
	// keeps huge expires_in values from overflowing time.Duration (which
	// made every request fetch a new token).
	MaxTokenLifetime = 24 * time.Hour
	// maxTokenAnswer bounds the size of a token server's answer.
	maxTokenAnswer = 1 << 20
)

// RefreshMargin returns how much validity a token of the given lifetime must
// have left before a new request may use it: max(10 s, 20 % of lifetime).
// Tokens living less than 20 s cannot satisfy that even when brand new, so
// for them the margin is capped at half the lifetime (a 2 s token is used
// for 1 s).
func RefreshMargin(lifetime time.Duration) time.Duration {
	m := max(MinRefreshMargin, time.Duration(float64(lifetime)*RefreshMarginFraction))
	return min(m, lifetime/2)
}

// token is a registry token (or, for Basic registries, an Authorization
// value) with its validity.
type token struct {
	id       uint64 // unique per Manager: compare-and-drop after a rejection
	header   string // full Authorization header value; secret
	issued   time.Time
	expiry   time.Time
	lifetime time.Duration
}

// remaining is how long t stays valid after now.
func (t *token) remaining(now time.Time) time.Duration {
	return t.expiry.Sub(now)
}

// usable reports whether a request may start with t at now: it must have at
// least max(minValidity, RefreshMargin(lifetime)) left.
func (t *token) usable(now time.Time, minValidity time.Duration) bool {
	return t.remaining(now) >= max(minValidity, RefreshMargin(t.lifetime))
}

// tokenAnswer is the JSON a token server returns (distribution token spec and
// its OAuth2 variant).
type tokenAnswer struct {
	Token        string    `json:"token"`
	AccessToken  string    `json:"access_token"`
	ExpiresIn    expiresIn `json:"expires_in"`
	IssuedAt     string    `json:"issued_at"`
	RefreshToken string    `json:"refresh_token"`
}

// expiresIn is the expires_in of a token answer in seconds, decoded
// leniently: any JSON number (integer, fraction, exponent, however large)
// or a string holding one; anything else counts as absent (0). A malformed
// lifetime must not fail the exchange: the default applies.
type expiresIn float64

func (e *expiresIn) UnmarshalJSON(b []byte) error {
	*e = 0
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return nil
	}
	var f float64
	switch v := v.(type) {
	case float64:
		f = v
	case string:
		p, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil {
			return nil
		}
		f = p
	default:
		return nil
	}
	if math.IsNaN(f) || f <= 0 {
		return nil
	}
	*e = expiresIn(f)
	return nil
}

// duration returns e as a duration, capped at MaxTokenLifetime (0 when
// absent or not positive).
func (e expiresIn) duration() time.Duration {
	if e <= 0 {
		return 0
	}
	if float64(e) >= MaxTokenLifetime.Seconds() {
		return MaxTokenLifetime
	}
	return time.Duration(float64(e) * float64(time.Second))
}

// tokenRequest describes one exchange of a credential for a token.
type tokenRequest struct {
	realm    *url.URL
	service  string
	scopes   []string
	cred     Credential
	clientID string
}

// errPOSTUnsupported signals that the token server does not implement the
// OAuth2 POST variant (404/405), so the caller falls back to GET.
type errPOSTUnsupported struct{ status int }

func (e errPOSTUnsupported) Error() string {
	return fmt.Sprintf("token server does not support OAuth2 POST (HTTP %d)", e.status)
}

// postToken performs the OAuth2 refresh_token grant with cred's identity
// token.
func postToken(ctx context.Context, client *http.Client, tr tokenRequest) (tokenAnswer, error) {
	form := url.Values{}
	form.Set("grant_type", "refresh_token")
	form.Set("refresh_token", tr.cred.IdentityToken)
	form.Set("client_id", tr.clientID)
	if tr.service != "" {
		form.Set("service", tr.service)
	}
	if len(tr.scopes) > 0 {
		form.Set("scope", strings.Join(tr.scopes, " "))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, tr.realm.String(), strings.NewReader(form.Encode()))
	if err != nil {
		return tokenAnswer{}, fmt.Errorf("%w: building request for %s: %w", ErrTokenServer, redactURL(tr.realm), err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return doToken(client, req)
}

// getToken performs the classic GET exchange: Basic auth with the
// credential, or anonymous. An identity token is sent as the Basic password
// (with user "<token>" when no user name is known), the convention of docker
// credential helpers, for token servers without the POST variant.
func getToken(ctx context.Context, client *http.Client, tr tokenRequest) (tokenAnswer, error) {
	u := *tr.realm
	q := u.Query()
	if tr.service != "" {
		q.Set("service", tr.service)
	}
	for _, s := range tr.scopes {
		q.Add("scope", s)
	}
	if tr.cred.Username != "" {
		q.Set("account", tr.cred.Username)
	}
	u.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return tokenAnswer{}, fmt.Errorf("%w: building request for %s: %w", ErrTokenServer, redactURL(tr.realm), err)
	}
	switch {
	case tr.cred.IdentityToken != "":
		user := tr.cred.Username
		if user == "" {
			user = "<token>"
		}
		req.SetBasicAuth(user, tr.cred.IdentityToken)
	case tr.cred.Username != "" || tr.cred.Password != "":
		req.SetBasicAuth(tr.cred.Username, tr.cred.Password)
	}
	return doToken(client, req)
}

// doToken sends a token request and decodes the answer. Errors name the
// realm without its query and never include the answer's body.
func doToken(client *http.Client, req *http.Request) (tokenAnswer, error) {
	where := req.Method + " " + redactURL(req.URL)
	resp, err := client.Do(req)
	if err != nil {
		// url.Error would quote the full URL; report the redacted one and the
		// underlying cause only.
		cause := err
		var uerr *url.Error
		if errors.As(err, &uerr) {
			cause = uerr.Err
		}
		if ctxErr := req.Context().Err(); ctxErr != nil {
			return tokenAnswer{}, fmt.Errorf("authbridge: token request %s: %w", where, ctxErr)
		}
		return tokenAnswer{}, fmt.Errorf("%w: %s: %w", ErrTokenServer, where, cause)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxTokenAnswer+1))
	if err != nil {
		return tokenAnswer{}, fmt.Errorf("%w: %s: reading answer: %w", ErrTokenServer, where, err)
	}
	switch {
	case resp.StatusCode == http.StatusOK:
	case req.Method == http.MethodPost && (resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusMethodNotAllowed):
		return tokenAnswer{}, errPOSTUnsupported{status: resp.StatusCode}
	case resp.StatusCode == http.StatusUnauthorized:
		return tokenAnswer{}, fmt.Errorf("%w: %s: token server rejected the credentials (HTTP 401)", ErrUnauthorized, where)
	case resp.StatusCode == http.StatusForbidden:
		return tokenAnswer{}, fmt.Errorf("%w: %s: token server refused access (HTTP 403)", ErrDenied, where)
	case req.Method == http.MethodPost && resp.StatusCode == http.StatusBadRequest && strings.Contains(string(body), "invalid_grant"):
		return tokenAnswer{}, fmt.Errorf("%w: %s: token server rejected the identity token (invalid_grant)", ErrUnauthorized, where)
	default:
		return tokenAnswer{}, fmt.Errorf("%w: %s: unexpected HTTP status %d", ErrTokenServer, where, resp.StatusCode)
	}
	if len(body) > maxTokenAnswer {
		return tokenAnswer{}, fmt.Errorf("%w: %s: answer larger than %d bytes", ErrTokenServer, where, maxTokenAnswer)
	}
	var a tokenAnswer
	if err := json.Unmarshal(body, &a); err != nil {
		return tokenAnswer{}, fmt.Errorf("%w: %s: %s", ErrTokenServer, where, describeJSONError(err))
	}
	if a.Token == "" && a.AccessToken == "" {
		return tokenAnswer{}, fmt.Errorf("%w: %s: answer has neither token nor access_token", ErrTokenServer, where)
	}
	return a, nil
}

// bearer returns the token to send: access_token wins when both are present
// (OAuth2 answers), as in the docker and containerd clients.
func (a tokenAnswer) bearer() string {
	if a.AccessToken != "" {
		return a.AccessToken
	}
	return a.Token
}

// validity computes when a token answered at receipt was issued and expires.
// expires_in defaults to 60 s and is capped at MaxTokenLifetime; issued_at
// is honoured but never later than receipt (a server clock running ahead
// must not extend the token's life on our clock) and never earlier than
// half the lifetime before it: a token that arrives with less than half its
// life left is taken as clock skew, not as nearly expired (else a server
// clock running behind would make every request fetch a new token; a token
// that really expires early is refreshed on its 401).
func (a tokenAnswer) validity(receipt time.Time) (issued, expiry time.Time, lifetime time.Duration) {
	lifetime = DefaultExpiresIn
	if d := a.ExpiresIn.duration(); d > 0 {
		lifetime = d
	}
	issued = receipt
	if a.IssuedAt != "" {
		if t, err := time.Parse(time.RFC3339, a.IssuedAt); err == nil && t.Before(receipt) {
			issued = t
		}
	}
	if earliest := receipt.Add(-lifetime / 2); issued.Before(earliest) {
		issued = earliest
	}
	return issued, issued.Add(lifetime), lifetime
}
