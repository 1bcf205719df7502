package authtest

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TokenServerConfig configures a TokenServer. Zero fields take the defaults
// documented on each.
type TokenServerConfig struct {
	// Service is the service name tokens are issued for. Default
	// "authtest-registry".
	Service string
	// Lifetime of issued tokens. Default 60 s.
	Lifetime time.Duration
	// Key signs tokens (HMAC-SHA256). Default: random.
	Key []byte
	// Now is the clock. Default time.Now.
	Now func() time.Time
	// TLS serves https (with httptest's certificate). Default plain http.
	TLS bool
}

// TokenServerStats are the counters of a TokenServer.
type TokenServerStats struct {
	GETs            uint64 // GET token requests
	POSTs           uint64 // POST token requests (including unsupported ones)
	Issued          uint64 // tokens issued
	Rejected        uint64 // requests answered 401 (bad credentials)
	POSTUnsupported uint64 // POSTs answered 405 while POST is disabled
	Unavailable     uint64 // requests answered 503 while the server is down
}

// tsUser is an account of the TokenServer.
type tsUser struct {
	password       string
	identityTokens map[string]bool
	access         map[string][]string // repository ("*" = any) -> actions
}

// TokenServer is an httptest server implementing the distribution token
// specification at /token: GET with Basic or anonymous access, and the OAuth2
// POST variant with the password and refresh_token grants. Tokens are signed
// with Key and grant the intersection of the requested scope with the
// account's access (possibly nothing, like distribution's token servers).
// Identity tokens are accepted as the Basic password on GET as well.
type TokenServer struct {
	srv     *httptest.Server
	service string
	key     []byte
	now     func() time.Time

	// mu guards the settings below.
	mu             sync.Mutex
	users          map[string]*tsUser
	anonymous      map[string][]string
	lifetime       time.Duration
	omitExpiresIn  bool
	rawExpiresIn   json.RawMessage
	omitIssuedAt   bool
	issuedAtOffset time.Duration
	postSupported  bool
	down           bool

	gets, posts, issued, rejected, postUnsupported, unavailable atomic.Uint64
}

// NewTokenServer starts a TokenServer; it is closed when tb's test ends.
func NewTokenServer(tb testing.TB, cfg TokenServerConfig) *TokenServer {
	tb.Helper()
	s := &TokenServer{
		service:       cfg.Service,
		key:           cfg.Key,
		now:           cfg.Now,
		users:         map[string]*tsUser{},
		anonymous:     map[string][]string{},
		lifetime:      cfg.Lifetime,
		postSupported: true,
	}
	if s.service == "" {
		s.service = "authtest-registry"
	}
	if s.key == nil {
		s.key = randomKey()
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.lifetime <= 0 {
		s.lifetime = 60 * time.Second
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/token", s.serveToken)
	if cfg.TLS {
		s.srv = httptest.NewTLSServer(mux)
	} else {
		s.srv = httptest.NewServer(mux)
	}
	tb.Cleanup(s.srv.Close)
	return s
}

// URL is the server's base URL.
func (s *TokenServer) URL() string { return s.srv.URL }

// Realm is the token endpoint to put in challenges.
func (s *TokenServer) Realm() string { return s.srv.URL + "/token" }

// Service is the service name tokens are issued for.
func (s *TokenServer) Service() string { return s.service }

// Key is the HMAC key tokens are signed with.
func (s *TokenServer) Key() []byte { return s.key }

// Client returns an http.Client that trusts the server (needed with TLS).
func (s *TokenServer) Client() *http.Client { return s.srv.Client() }

// AddUser adds (or replaces) an account with access: repository name ("*" for
// any) to the actions allowed on it.
func (s *TokenServer) AddUser(name, password string, access map[string][]string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.users[name] = &tsUser{password: password, identityTokens: map[string]bool{}, access: access}
}

// AddIdentityToken lets token authenticate as user (refresh_token grant, or
// as Basic password on GET). The user must exist.
func (s *TokenServer) AddIdentityToken(user, token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if u := s.users[user]; u != nil {
		u.identityTokens[token] = true
	}
}

// SetAnonymousAccess allows anonymous clients actions on repository.
func (s *TokenServer) SetAnonymousAccess(repository string, actions ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.anonymous[repository] = actions
}

// SetLifetime changes the lifetime of tokens issued from now on.
func (s *TokenServer) SetLifetime(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lifetime = d
}

// SetOmitExpiresIn makes answers leave out expires_in (clients must assume
// 60 s); the real lifetime stays what SetLifetime says.
func (s *TokenServer) SetOmitExpiresIn(omit bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.omitExpiresIn = omit
}

// SetRawExpiresIn makes answers carry raw (any JSON value, e.g. a huge
// number, a fraction or a string) as expires_in, as a broken or hostile
// token server might; the real lifetime stays what SetLifetime says. nil
// restores the normal value.
func (s *TokenServer) SetRawExpiresIn(raw json.RawMessage) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rawExpiresIn = raw
}

// SetOmitIssuedAt makes answers leave out issued_at.
func (s *TokenServer) SetOmitIssuedAt(omit bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.omitIssuedAt = omit
}

// SetIssuedAtOffset makes tokens issued at now+d (negative: in the past, as a
// server with a slow clock or a token cache would); expiry counts from there.
func (s *TokenServer) SetIssuedAtOffset(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.issuedAtOffset = d
}

// SetPOSTSupported enables (default) or disables the OAuth2 POST variant;
// disabled, POST answers 405 Method Not Allowed.
func (s *TokenServer) SetPOSTSupported(ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.postSupported = ok
}

// SetDown makes every request fail with 503 while down is true.
func (s *TokenServer) SetDown(down bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.down = down
}

// Stats returns the counters.
func (s *TokenServer) Stats() TokenServerStats {
	return TokenServerStats{
		GETs: s.gets.Load(), POSTs: s.posts.Load(), Issued: s.issued.Load(), Rejected: s.rejected.Load(),
		POSTUnsupported: s.postUnsupported.Load(), Unavailable: s.unavailable.Load(),
	}
}

// tokenError writes a distribution-style error answer.
func tokenError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"errors": []map[string]string{{"code": code, "message": msg}}})
}

func (s *TokenServer) serveToken(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch r.Method {
	case http.MethodGet:
		s.gets.Add(1)
	case http.MethodPost:
		s.posts.Add(1)
	default:
		tokenError(w, http.StatusMethodNotAllowed, "UNSUPPORTED", "method not allowed")
		return
	}
	if s.down {
		s.unavailable.Add(1)
		tokenError(w, http.StatusServiceUnavailable, "UNAVAILABLE", "token service down")
		return
	}
	var (
		subject string
		ok      bool
		scopes  []string
		service string
		grant   string
	)
	if r.Method == http.MethodPost {
		if !s.postSupported {
			s.postUnsupported.Add(1)
			tokenError(w, http.StatusMethodNotAllowed, "UNSUPPORTED", "POST not supported")
			return
		}
		if err := r.ParseForm(); err != nil {
			tokenError(w, http.StatusBadRequest, "invalid_request", "bad form")
			return
		}
		if r.PostForm.Get("client_id") == "" {
			tokenError(w, http.StatusBadRequest, "invalid_request", "client_id required")
			return
		}
		service = r.PostForm.Get("service")
		scopes = strings.Fields(r.PostForm.Get("scope"))
		grant = r.PostForm.Get("grant_type")
		switch grant {
		case "password":
			subject, ok = s.checkPassword(r.PostForm.Get("username"), r.PostForm.Get("password"))
		case "refresh_token":
			subject, ok = s.checkIdentityToken("", r.PostForm.Get("refresh_token"))
		default:
			tokenError(w, http.StatusBadRequest, "unsupported_grant_type", "unsupported grant_type")
			return
		}
		if !ok {
			s.rejected.Add(1)
			tokenError(w, http.StatusUnauthorized, "invalid_grant", "authentication failed")
			return
		}
	} else {
		q := r.URL.Query()
		service = q.Get("service")
		for _, sc := range q["scope"] {
			scopes = append(scopes, strings.Fields(sc)...)
		}
		if user, pass, hasAuth := r.BasicAuth(); hasAuth {
			if subject, ok = s.checkPassword(user, pass); !ok {
				subject, ok = s.checkIdentityToken(user, pass)
			}
			if !ok {
				s.rejected.Add(1)
				w.Header().Set("WWW-Authenticate", `Basic realm="authtest"`)
				tokenError(w, http.StatusUnauthorized, "UNAUTHORIZED", "authentication failed")
				return
			}
		}
	}
	if service != s.service {
		tokenError(w, http.StatusBadRequest, "invalid_request", "unknown service")
		return
	}
	now := s.now()
	issued := now.Add(s.issuedAtOffset)
	claims := Claims{
		Subject: subject, Audience: s.service, IssuedAt: issued.UnixNano(), Expiry: issued.Add(s.lifetime).UnixNano(),
		Access: s.grant(subject, scopes), ID: randomID(),
	}
	tok := SignToken(s.key, claims)
	answer := map[string]any{}
	if r.Method == http.MethodPost {
		answer["access_token"] = tok
		answer["scope"] = strings.Join(scopes, " ")
		if grant == "password" && r.PostForm.Get("access_type") == "offline" {
			answer["refresh_token"] = s.newIdentityTokenLocked(subject)
		}
	} else {
		answer["token"] = tok
		answer["access_token"] = tok
	}
	switch {
	case s.rawExpiresIn != nil:
		answer["expires_in"] = s.rawExpiresIn
	case !s.omitExpiresIn:
		answer["expires_in"] = int64(s.lifetime / time.Second)
	}
	if !s.omitIssuedAt {
		answer["issued_at"] = issued.UTC().Format(time.RFC3339Nano)
	}
	s.issued.Add(1)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(answer)
}

// checkPassword authenticates a user. Needs s.mu.
func (s *TokenServer) checkPassword(user, password string) (string, bool) {
	u := s.users[user]
	if u == nil || u.password == "" || u.password != password {
		return "", false
	}
	return user, true
}

// checkIdentityToken authenticates with an identity token, optionally for a
// named user ("" or "<token>" for any). Needs s.mu.
func (s *TokenServer) checkIdentityToken(user, token string) (string, bool) {
	for name, u := range s.users {
		if u.identityTokens[token] && (user == "" || user == "<token>" || user == name) {
			return name, true
		}
	}
	return "", false
}

// newIdentityTokenLocked creates a refresh token for subject. Needs s.mu.
func (s *TokenServer) newIdentityTokenLocked(subject string) string {
	tok := randomID()
	if u := s.users[subject]; u != nil {
		u.identityTokens[tok] = true
	}
	return tok
}

// grant intersects the requested scopes with what subject may do. Needs s.mu.
func (s *TokenServer) grant(subject string, scopes []string) []Access {
	allowed := s.anonymous
	if subject != "" {
		allowed = s.users[subject].access
	}
	var out []Access
	for _, scope := range scopes {
		typ, rest, ok := strings.Cut(scope, ":")
		if !ok || typ != "repository" {
			continue
		}
		i := strings.LastIndex(rest, ":")
		if i < 0 {
			continue
		}
		name, actions := rest[:i], strings.Split(rest[i+1:], ",")
		may := append(append([]string(nil), allowed[name]...), allowed["*"]...)
		var granted []string
		for _, a := range actions {
			for _, m := range may {
				if a == m || m == "*" {
					granted = append(granted, a)
					break
				}
			}
		}
		out = append(out, Access{Type: "repository", Name: name, Actions: granted})
	}
	return out
}
