package authtest

import (
	"crypto/hmac"
	"crypto/sha256"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// ProxyMode selects how an AuthProxy authenticates clients.
type ProxyMode int

const (
	// BearerMode demands tokens from a TokenServer (the default).
	BearerMode ProxyMode = iota
	// BasicMode demands Basic credentials on every request.
	BasicMode
)

// ExpiryStyle selects how an AuthProxy answers a request with an expired
// token.
type ExpiryStyle int

const (
	// ExpiryUnauthorized answers 401 with error="invalid_token" (distribution).
	ExpiryUnauthorized ExpiryStyle = iota
	// ExpiryECR answers 403 "Your authorization token has expired" (Amazon ECR).
	ExpiryECR
	// ExpiryS3 answers 400 with the S3 error code ExpiredToken.
	ExpiryS3
)

// ProxyConfig configures an AuthProxy.
type ProxyConfig struct {
	// Upstream is the registry behind the proxy, as a handler. One of
	// Upstream and UpstreamURL is required.
	Upstream http.Handler
	// UpstreamURL is the base URL of a registry server behind the proxy
	// (e.g. a /usr/bin/docker-registry on 127.0.0.1).
	UpstreamURL string
	// Mode is BearerMode (default) or BasicMode.
	Mode ProxyMode
	// TokenServer issues the tokens accepted in BearerMode (its realm,
	// service and key are used). Required in BearerMode.
	TokenServer *TokenServer
	// Expiry selects the answer to expired tokens. Default ExpiryUnauthorized.
	Expiry ExpiryStyle
	// Users maps user name to password in BasicMode.
	Users map[string]string
	// RedirectBlobs makes authorized blob GETs answer 307 to a separate
	// storage server (another host:port) with a signed URL, like registries
	// backed by object storage.
	RedirectBlobs bool
	// StorageURLLifetime is how long a signed storage URL is valid. Default
	// 20 min (distribution's default).
	StorageURLLifetime time.Duration
	// Now is the clock. Default time.Now.
	Now func() time.Time
	// TLS serves https (with httptest's certificate). Default plain http.
	TLS bool
}

// ProxyStats are the counters of an AuthProxy.
type ProxyStats struct {
	Requests      uint64        // requests received by the proxy
	Authorized    uint64        // requests passed to the upstream
	Unauthorized  uint64        // requests answered with a rejection (any status)
	NoAuth        uint64        // requests without (usable) credentials
	ExpiredTokens uint64        // requests that arrived with a validly signed but expired token
	MaxExpiredBy  time.Duration // how long past its expiry the stalest of those tokens was
	InvalidTokens uint64        // requests with a malformed or wrongly signed token
	Denied        uint64        // valid tokens lacking the needed access (insufficient_scope)
	BadBasic      uint64        // wrong Basic credentials (BasicMode)
	Redirects     uint64        // blob GETs redirected to the storage server

	StorageRequests       uint64 // requests received by the storage server
	StorageAuthViolations uint64 // storage requests that carried Authorization
	StorageExpired        uint64 // storage requests with an expired signed URL
}

// AuthProxy is an http.Handler that enforces registry authentication in front
// of an upstream registry, passing authorized requests (Range headers, 206
// and multipart answers included) through a reverse proxy. NewAuthProxy also
// serves it on a loopback httptest server.
type AuthProxy struct {
	cfg      ProxyConfig
	upstream http.Handler
	srv      *httptest.Server
	storage  *httptest.Server // nil unless RedirectBlobs
	signKey  []byte           // signs storage URLs

	requests, authorized, unauthorized, noAuth, expired, invalid, denied, badBasic, redirects atomic.Uint64
	storageRequests, storageViolations, storageExpired                                        atomic.Uint64
	maxExpiredBy                                                                              atomic.Int64
}

var _ http.Handler = (*AuthProxy)(nil)

// NewAuthProxy starts an AuthProxy (and its storage server when
// RedirectBlobs is set); both are closed when tb's test ends.
func NewAuthProxy(tb testing.TB, cfg ProxyConfig) *AuthProxy {
	tb.Helper()
	p := &AuthProxy{cfg: cfg, signKey: randomKey()}
	if p.cfg.Now == nil {
		p.cfg.Now = time.Now
	}
	if p.cfg.StorageURLLifetime <= 0 {
		p.cfg.StorageURLLifetime = 20 * time.Minute
	}
	switch {
	case cfg.Upstream != nil:
		p.upstream = cfg.Upstream
	case cfg.UpstreamURL != "":
		u, err := url.Parse(cfg.UpstreamURL)
		if err != nil {
			tb.Fatalf("authtest: upstream URL: %v", err)
		}
		p.upstream = ReverseProxy(u)
	default:
		tb.Fatal("authtest: ProxyConfig needs Upstream or UpstreamURL")
	}
	if cfg.Mode == BearerMode && cfg.TokenServer == nil {
		tb.Fatal("authtest: BearerMode needs a TokenServer")
	}
	start := httptest.NewServer
	if cfg.TLS {
		start = httptest.NewTLSServer
	}
	p.srv = start(p)
	tb.Cleanup(p.srv.Close)
	if cfg.RedirectBlobs {
		p.storage = start(http.HandlerFunc(p.serveStorage))
		tb.Cleanup(p.storage.Close)
	}
	return p
}

// ReverseProxy returns a handler forwarding requests to the registry at
// target unchanged except that Authorization is removed and Location headers
// pointing at target are rewritten to the proxy's host.
func ReverseProxy(target *url.URL) http.Handler {
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Host = pr.In.Host
			pr.Out.Header.Del("Authorization")
		},
		ModifyResponse: func(resp *http.Response) error {
			if loc, err := resp.Location(); err == nil && loc.Host == target.Host && resp.Request != nil {
				loc.Host = resp.Request.Host
				resp.Header.Set("Location", loc.String())
			}
			return nil
		},
	}
}

// URL is the proxy's base URL (http://127.0.0.1:port).
func (p *AuthProxy) URL() string { return p.srv.URL }

// Host is the proxy's host:port, i.e. the registry host clients talk to.
func (p *AuthProxy) Host() string {
	return strings.TrimPrefix(strings.TrimPrefix(p.srv.URL, "http://"), "https://")
}

// StorageURL is the storage server's base URL ("" without RedirectBlobs).
func (p *AuthProxy) StorageURL() string {
	if p.storage == nil {
		return ""
	}
	return p.storage.URL
}

// Client returns an http.Client that trusts the proxy (needed with TLS).
func (p *AuthProxy) Client() *http.Client { return p.srv.Client() }

// Stats returns the counters.
func (p *AuthProxy) Stats() ProxyStats {
	return ProxyStats{
		Requests: p.requests.Load(), Authorized: p.authorized.Load(), Unauthorized: p.unauthorized.Load(),
		NoAuth: p.noAuth.Load(), ExpiredTokens: p.expired.Load(), MaxExpiredBy: time.Duration(p.maxExpiredBy.Load()),
		InvalidTokens: p.invalid.Load(),
		Denied:        p.denied.Load(), BadBasic: p.badBasic.Load(), Redirects: p.redirects.Load(),
		StorageRequests: p.storageRequests.Load(), StorageAuthViolations: p.storageViolations.Load(),
		StorageExpired: p.storageExpired.Load(),
	}
}

// repoPath matches registry API paths naming a repository.
var repoPath = regexp.MustCompile(`^/v2/(.+)/(manifests|blobs|tags|referrers)/(.*)$`)

// target returns the repository and the action a request needs ("" for
// /v2/ itself), and whether it is a blob read.
func target(r *http.Request) (repo, action string, blobRead bool) {
	m := repoPath.FindStringSubmatch(r.URL.Path)
	if m == nil {
		return "", "", false
	}
	action = "push"
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		action = "pull"
	}
	blobRead = m[2] == "blobs" && r.Method == http.MethodGet && !strings.HasPrefix(m[3], "uploads")
	return m[1], action, blobRead
}

// ServeHTTP authenticates r and forwards it upstream (or redirects blob
// reads to the storage server).
func (p *AuthProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.requests.Add(1)
	repo, action, blobRead := target(r)
	if p.cfg.Mode == BasicMode {
		user, pass, ok := r.BasicAuth()
		if !ok || p.cfg.Users[user] == "" || p.cfg.Users[user] != pass {
			if ok {
				p.badBasic.Add(1)
			} else {
				p.noAuth.Add(1)
			}
			p.unauthorized.Add(1)
			w.Header().Set("WWW-Authenticate", `Basic realm="authtest"`)
			registryError(w, http.StatusUnauthorized, "UNAUTHORIZED", "authentication required")
			return
		}
	} else if !p.checkBearer(w, r, repo, action) {
		p.unauthorized.Add(1)
		return
	}
	p.authorized.Add(1)
	if blobRead && p.storage != nil {
		p.redirects.Add(1)
		http.Redirect(w, r, p.signStorageURL(r.URL.Path), http.StatusTemporaryRedirect)
		return
	}
	out := r.Clone(r.Context())
	out.Header.Del("Authorization")
	p.upstream.ServeHTTP(w, out)
}

// checkBearer validates the request's token, answering the rejection itself.
func (p *AuthProxy) checkBearer(w http.ResponseWriter, r *http.Request, repo, action string) bool {
	ts := p.cfg.TokenServer
	challenge := func(errCode string) {
		v := fmt.Sprintf(`Bearer realm=%q,service=%q`, ts.Realm(), ts.Service())
		if repo != "" {
			v += fmt.Sprintf(`,scope="repository:%s:%s"`, repo, action)
		}
		if errCode != "" {
			v += fmt.Sprintf(`,error=%q`, errCode)
		}
		w.Header().Set("WWW-Authenticate", v)
	}
	auth := r.Header.Get("Authorization")
	tok, isBearer := strings.CutPrefix(auth, "Bearer ")
	if !isBearer {
		p.noAuth.Add(1)
		challenge("")
		registryError(w, http.StatusUnauthorized, "UNAUTHORIZED", "authentication required")
		return false
	}
	claims, err := VerifyToken(ts.Key(), tok)
	if err != nil || claims.Audience != ts.Service() {
		p.invalid.Add(1)
		challenge("invalid_token")
		registryError(w, http.StatusUnauthorized, "UNAUTHORIZED", "invalid token")
		return false
	}
	if late := p.cfg.Now().Sub(time.Unix(0, claims.Expiry)); late >= 0 {
		p.expired.Add(1)
		for {
			old := p.maxExpiredBy.Load()
			if int64(late) <= old || p.maxExpiredBy.CompareAndSwap(old, int64(late)) {
				break
			}
		}
		switch p.cfg.Expiry {
		case ExpiryECR:
			registryError(w, http.StatusForbidden, "DENIED", "Your authorization token has expired. Reauthenticate and try again.")
		case ExpiryS3:
			s3Error(w, "ExpiredToken", "The provided token has expired.")
		default:
			challenge("invalid_token")
			registryError(w, http.StatusUnauthorized, "UNAUTHORIZED", "token expired")
		}
		return false
	}
	if repo != "" && !claims.Allows(repo, action) {
		p.denied.Add(1)
		challenge("insufficient_scope")
		registryError(w, http.StatusUnauthorized, "UNAUTHORIZED", "insufficient scope")
		return false
	}
	return true
}

// signStorageURL makes the signed storage URL for a blob path.
func (p *AuthProxy) signStorageURL(path string) string {
	exp := strconv.FormatInt(p.cfg.Now().Add(p.cfg.StorageURLLifetime).UnixNano(), 10)
	q := url.Values{"expires": {exp}, "signature": {p.storageSignature(path, exp)}}
	return p.storage.URL + path + "?" + q.Encode()
}

func (p *AuthProxy) storageSignature(path, exp string) string {
	mac := hmac.New(sha256.New, p.signKey)
	mac.Write([]byte(path + "\n" + exp))
	return b64.EncodeToString(mac.Sum(nil))
}

// serveStorage plays object storage: it serves blobs for signed URLs only and
// answers like S3 to credentials (which it must never receive) and to expired
// signatures.
func (p *AuthProxy) serveStorage(w http.ResponseWriter, r *http.Request) {
	p.storageRequests.Add(1)
	if r.Header.Get("Authorization") != "" {
		p.storageViolations.Add(1)
		s3Error(w, "InvalidArgument", "Only one auth mechanism allowed")
		return
	}
	exp := r.URL.Query().Get("expires")
	sig := r.URL.Query().Get("signature")
	if !hmac.Equal([]byte(sig), []byte(p.storageSignature(r.URL.Path, exp))) {
		s3ErrorStatus(w, http.StatusForbidden, "SignatureDoesNotMatch", "signature mismatch")
		return
	}
	n, err := strconv.ParseInt(exp, 10, 64)
	if err != nil || !p.cfg.Now().Before(time.Unix(0, n)) {
		p.storageExpired.Add(1)
		s3Error(w, "ExpiredToken", "The provided token has expired.")
		return
	}
	out := r.Clone(r.Context())
	out.URL.RawQuery = ""
	p.upstream.ServeHTTP(w, out)
}

// registryError writes a distribution-style JSON error.
func registryError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	fmt.Fprintf(w, `{"errors":[{"code":%q,"message":%q}]}`+"\n", code, msg)
}

// s3Error writes an S3-style XML error with status 400.
func s3Error(w http.ResponseWriter, code, msg string) {
	s3ErrorStatus(w, http.StatusBadRequest, code, msg)
}

func s3ErrorStatus(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/xml")
	w.WriteHeader(status)
	fmt.Fprintf(w, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>%s</Code><Message>%s</Message></Error>\n", code, msg)
}
