package authbridge

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containers/image/v5/docker/reference"
	dockerconfig "github.com/containers/image/v5/pkg/docker/config"
	"github.com/containers/image/v5/types"
	"github.com/sirupsen/logrus"
	"golang.org/x/sync/singleflight"
)

// Defaults of Options.
const (
	// DefaultClientID is the OAuth2 client_id sent with POST token requests.
	DefaultClientID = "lazypull"
	// DefaultTokenTimeout bounds one exchange with a token server.
	DefaultTokenTimeout = 30 * time.Second
	// DefaultFailureBackoff is how long a failed token fetch (or credential
	// lookup) is remembered: requests within that time get the same error
	// instead of hammering the token server. Nothing else of a failure is
	// kept.
	DefaultFailureBackoff = time.Second
	// BasicCredentialTTL is how long credentials for a Basic-only registry are
	// kept in memory before the auth files are read again.
	BasicCredentialTTL = 60 * time.Second
)

// Options configures a Manager. The zero value reads credentials exactly as
// podman does for the current user, keeps handed-over credentials in memory
// only, and logs nothing.
//
// containers/image reads HOME (once per process), XDG_RUNTIME_DIR,
// XDG_CONFIG_HOME and DOCKER_CONFIG from the environment; REGISTRY_AUTH_FILE is
// NOT read by it: callers map that variable to AuthFile themselves, as podman
// does.
type Options struct {
	// AuthFile is an explicit auth file (podman --authfile). When set it is the
	// only auth file read. Default "": podman's search order.
	AuthFile string
	// RegistriesConf is the registries.conf whose credential-helpers list is
	// used. Default "": the system file (or the user's, for rootless users).
	RegistriesConf string
	// RegistriesConfDir is the registries.conf.d drop-in directory. Default "":
	// the system directory.
	RegistriesConfDir string
	// RootForImplicitAbsolutePaths prefixes the implicit absolute paths
	// (/run/containers/<uid>/auth.json, /etc/containers/registries.conf), for
	// tests and chroots. Default "": none.
	RootForImplicitAbsolutePaths string
	// HandoverFile is the file where credentials handed over by podman
	// persist when HandoverPersist is set (mode 0600). When it is not set, a
	// file left there by an earlier version or run is deleted at start.
	// Default "": none.
	HandoverFile string
	// HandoverPersist keeps handed-over credentials in HandoverFile for
	// HandoverPersistTTL, so that they survive a daemon restart. Default
	// false: memory only.
	HandoverPersist bool
	// HandoverTTL is how long a handed-over credential is used after podman
	// last handed it over. Default DefaultHandoverTTL (24 h).
	HandoverTTL time.Duration
	// HandoverPersistTTL is how long a handed-over credential stays in
	// HandoverFile. Default DefaultHandoverPersistTTL (1 h).
	HandoverPersistTTL time.Duration
	// HTTPTransport is the transport for token requests and the default base
	// for Transport. Default: a clone of http.DefaultTransport.
	HTTPTransport http.RoundTripper
	// ClientID is the OAuth2 client_id. Default DefaultClientID.
	ClientID string
	// TokenTimeout bounds one token exchange. Default DefaultTokenTimeout (30 s).
	TokenTimeout time.Duration
	// FailureBackoff is how long a failed token fetch is remembered. Default
	// DefaultFailureBackoff (1 s); negative disables it.
	FailureBackoff time.Duration
	// Now is the clock. Default time.Now.
	Now func() time.Time
	// Logger receives Debug lines about token fetches and rejections (never a
	// secret). Default: silent.
	Logger *logrus.Entry
}

// Stats are counters for `lazypull status`. They contain no secrets.
type Stats struct {
	// TokenFetches counts requests sent to token servers.
	TokenFetches uint64
	// TokenFetchFailures counts token requests that failed.
	TokenFetchFailures uint64
	// Refreshes counts tokens fetched to replace a cached one (expired, near
	// expiry, or rejected by the registry).
	Refreshes uint64
	// ProactiveRefreshes counts the Refreshes of tokens that were still valid
	// but had less than the safety margin (or EnsureFresh's minimum) left.
	ProactiveRefreshes uint64
	// Unauthorized401 counts registry answers that rejected authorization:
	// 401, ECR-style 403 "expired", S3-style 400 ExpiredToken.
	Unauthorized401 uint64
	// Retries counts requests sent again after such a rejection.
	Retries uint64
	// POSTFallbacks counts OAuth2 POST token requests that fell back to GET.
	POSTFallbacks uint64
	// CredentialLookups counts reads of the credential sources.
	CredentialLookups uint64
	// CachedTokens is the number of tokens held in memory.
	CachedTokens int
	// HandoverEntries is the number of handed-over credentials held.
	HandoverEntries int
	// HandoverLoadError describes why the handover file could not be loaded
	// at start ("" when it could).
	HandoverLoadError string
}

// String formats s on one line.
func (s Stats) String() string {
	out := fmt.Sprintf("token fetches %d (failed %d), refreshes %d (proactive %d), rejected %d, retries %d, POST fallbacks %d, credential lookups %d, cached tokens %d, handed-over credentials %d",
		s.TokenFetches, s.TokenFetchFailures, s.Refreshes, s.ProactiveRefreshes, s.Unauthorized401, s.Retries, s.POSTFallbacks, s.CredentialLookups, s.CachedTokens, s.HandoverEntries)
	if s.HandoverLoadError != "" {
		out += "; handover file: " + s.HandoverLoadError
	}
	return out
}

// Manager finds credentials and keeps registry tokens fresh. Create one per
// daemon with NewManager; it is safe for concurrent use.
type Manager struct {
	sys            *types.SystemContext
	handover       *HandoverStore
	handoverErr    string
	tokenClient    *http.Client
	defaultBase    http.RoundTripper
	ownedTransport *http.Transport // closed on Close; nil when the caller supplied one
	clientID       string
	tokenTimeout   time.Duration
	failureBackoff time.Duration
	now            func() time.Time
	log            *logrus.Entry
	ctx            context.Context // cancelled by Close; parent of token fetches
	cancel         context.CancelFunc
	flights        singleflight.Group
	nextID         atomic.Uint64

	tokenFetches, tokenFetchFailures, refreshes, proactive atomic.Uint64
	rejections, retries, postFallbacks, credLookups        atomic.Uint64

	// mu guards the fields below and the decision to add to wg.
	mu       sync.Mutex
	closed   bool
	wg       sync.WaitGroup // running token fetches
	hosts    map[string]*hostState
	tokens   map[string]*token
	failures map[string]failure
	noPOST   map[string]bool // realm URL -> token server lacks OAuth2 POST
	// mirrorsFiles holds the references whose handed-over credential
	// equaled the auth files' when it was handed over (CredentialID).
	mirrorsFiles map[string]bool
}

// hostState is what a Manager learned about one registry host.
type hostState struct {
	auth   hostAuth
	scheme string // URL scheme of the requests seen for the host
}

// failure is a remembered failed fetch.
type failure struct {
	err   error
	until time.Time
}

// NewManager creates a Manager. A corrupt handover file does not fail it: the
// Manager starts without handed-over credentials, logs a warning and reports
// the problem in Stats.HandoverLoadError.
func NewManager(o Options) (*Manager, error) {
	m := &Manager{
		sys: &types.SystemContext{
			AuthFilePath:                 o.AuthFile,
			SystemRegistriesConfPath:     o.RegistriesConf,
			SystemRegistriesConfDirPath:  o.RegistriesConfDir,
			RootForImplicitAbsolutePaths: o.RootForImplicitAbsolutePaths,
		},
		clientID:       o.ClientID,
		tokenTimeout:   o.TokenTimeout,
		failureBackoff: o.FailureBackoff,
		now:            o.Now,
		log:            o.Logger,
		hosts:          map[string]*hostState{},
		tokens:         map[string]*token{},
		failures:       map[string]failure{},
		noPOST:         map[string]bool{},
		mirrorsFiles:   map[string]bool{},
	}
	if m.clientID == "" {
		m.clientID = DefaultClientID
	}
	if m.tokenTimeout <= 0 {
		m.tokenTimeout = DefaultTokenTimeout
	}
	if m.failureBackoff == 0 {
		m.failureBackoff = DefaultFailureBackoff
	}
	if m.now == nil {
		m.now = time.Now
	}
	if m.log == nil {
		l := logrus.New()
		l.Out = io.Discard
		l.Level = logrus.PanicLevel
		m.log = logrus.NewEntry(l)
	}
	m.defaultBase = o.HTTPTransport
	if m.defaultBase == nil {
		m.ownedTransport = http.DefaultTransport.(*http.Transport).Clone()
		m.defaultBase = m.ownedTransport
	}
	m.tokenClient = &http.Client{Transport: m.defaultBase}

	store, err := OpenHandoverStore(HandoverOptions{
		Path: o.HandoverFile, Persist: o.HandoverPersist, TTL: o.HandoverTTL, PersistTTL: o.HandoverPersistTTL, Now: m.now,
		OnError: func(err error) {
			m.log.WithError(err).Warn("Removing expired handed-over credentials from disk failed")
		},
	})
	switch {
	case errors.Is(err, ErrCorruptHandover):
		m.handoverErr = err.Error()
		m.log.WithError(err).Warn("Ignoring the handed-over credentials file")
	case err != nil:
		return nil, err
	}
	m.handover = store
	m.ctx, m.cancel = context.WithCancel(context.Background())
	return m, nil
}

// Close stops running token fetches and waits for them. Transports of a
// closed Manager fail with ErrClosed. Close is idempotent.
func (m *Manager) Close() error {
	m.mu.Lock()
	already := m.closed
	m.closed = true
	m.mu.Unlock()
	if already {
		return nil
	}
	m.cancel()
	m.wg.Wait()
	m.handover.Close()
	if m.ownedTransport != nil {
		m.ownedTransport.CloseIdleConnections()
	}
	return nil
}

// isClosed reports whether Close was called.
func (m *Manager) isClosed() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.closed
}

// Stats returns a snapshot of the counters.
func (m *Manager) Stats() Stats {
	m.mu.Lock()
	cached := len(m.tokens)
	m.mu.Unlock()
	return Stats{
		TokenFetches:       m.tokenFetches.Load(),
		TokenFetchFailures: m.tokenFetchFailures.Load(),
		Refreshes:          m.refreshes.Load(),
		ProactiveRefreshes: m.proactive.Load(),
		Unauthorized401:    m.rejections.Load(),
		Retries:            m.retries.Load(),
		POSTFallbacks:      m.postFallbacks.Load(),
		CredentialLookups:  m.credLookups.Load(),
		CachedTokens:       cached,
		HandoverEntries:    m.handover.Len(),
		HandoverLoadError:  m.handoverErr,
	}
}

// Handover records credentials podman handed over for the exact image
// reference ref (see ParseAuthHelperInput) and persists them. They take
// precedence over the auth files for that reference only. A zero Credential
// removes the entry. Tokens obtained with earlier handed-over credentials for
// ref are dropped.
func (m *Manager) Handover(ref string, c Credential) error {
	return m.HandoverAll(map[string]Credential{ref: c})
}

// HandoverAll is Handover for every entry of creds, with one file write.
func (m *Manager) HandoverAll(creds map[string]Credential) error {
	if err := m.handover.PutAll(creds); err != nil {
		return err
	}
	m.noteFilesMirror(creds)
	m.mu.Lock()
	defer m.mu.Unlock()
	for ref := range creds {
		norm, err := normalizeRef(ref)
		if err != nil {
			continue // PutAll accepted it, so this cannot happen
		}
		suffix := "\x00" + handoverSource(norm)
		for k := range m.tokens {
			if strings.HasSuffix(k, suffix) {
				delete(m.tokens, k)
			}
		}
		for k := range m.failures {
			if strings.HasSuffix(k, suffix) {
				delete(m.failures, k)
			}
		}
	}
	return nil
}

// handoverSource is the credential-source part of cache keys for a
// reference with handed-over credentials.
func handoverSource(ref string) string { return "handover:" + ref }

// filesSource is the credential-source part of cache keys for credentials
// read from auth files and helpers.
const filesSource = "files"

// credentialSource names where credentials for ref come from right now.
func (m *Manager) credentialSource(ref string) string {
	if _, ok := m.handover.Get(ref); ok {
		return handoverSource(ref)
	}
	return filesSource
}

// credential reads the credential for ref from source. Files and helpers are
// read on every call, so `podman login` takes effect at the next fetch.
func (m *Manager) credential(ref reference.Named, source string) (Credential, error) {
	m.credLookups.Add(1)
	if source != filesSource {
		if c, ok := m.handover.Get(ref.String()); ok {
			return c, nil
		}
		// Expired or replaced since the source was chosen: use the files.
	}
	ac, err := dockerconfig.GetCredentialsForRef(m.sys, ref)
	if err != nil {
		return Credential{}, fmt.Errorf("%w for %s: %w", ErrCredentials, ref.Name(), err)
	}
	return Credential{Username: ac.Username, Password: ac.Password, IdentityToken: ac.IdentityToken}, nil
}

// HasCredentials reports whether ref is read with credentials: handed over
// by podman, or found in the auth files and helpers podman uses (read now,
// so a login or logout counts at once). An image read without credentials
// is public to everybody who can reach the registry.
func (m *Manager) HasCredentials(ref reference.Named) bool {
	c, err := m.credential(ref, m.credentialSource(ref.String()))
	if err != nil {
		return true // cannot tell: treat as private
	}
	return c != (Credential{})
}

// host returns (a copy of) the state of a registry host.
func (m *Manager) host(h string) hostState {
	m.mu.Lock()
	defer m.mu.Unlock()
	if hs := m.hosts[h]; hs != nil {
		return *hs
	}
	return hostState{}
}

// updateHost changes the state of a registry host under m.mu.
func (m *Manager) updateHost(h string, f func(*hostState)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	hs := m.hosts[h]
	if hs == nil {
		hs = &hostState{}
		m.hosts[h] = hs
	}
	f(hs)
}

// dropToken removes the token stored under key if it is still the one with
// id (a concurrent request may already have replaced it).
func (m *Manager) dropToken(key string, id uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if t := m.tokens[key]; t != nil && t.id == id {
		delete(m.tokens, key)
	}
}

// cachedOrFetch returns the token stored under key if a request may start
// with it (see token.usable) and it is not the rejected one; otherwise it
// fetches a new one. Concurrent callers for one key share one fetch, which
// runs under the Manager's context (not the caller's) so that a caller giving
// up does not fail the others.
func (m *Manager) cachedOrFetch(ctx context.Context, key string, minValidity time.Duration, rejected uint64, fetch func(context.Context) (*token, error)) (*token, error) {
	t, err := m.cachedOrFetchOnce(ctx, key, minValidity, rejected, fetch)
	if err == nil && rejected != 0 && t.id == rejected {
		// Merged into a fetch that started before the rejection and found
		// the rejected token still cached: go once more.
		return m.cachedOrFetchOnce(ctx, key, minValidity, rejected, fetch)
	}
	return t, err
}

// cachedOrFetchOnce is one round of cachedOrFetch.
func (m *Manager) cachedOrFetchOnce(ctx context.Context, key string, minValidity time.Duration, rejected uint64, fetch func(context.Context) (*token, error)) (*token, error) {
	if t, done, err := m.lookupCached(key, minValidity, rejected); done {
		return t, err
	}
	ch := m.flights.DoChan(key, func() (any, error) {
		if t, done, err := m.lookupCached(key, minValidity, rejected); done {
			return t, err
		}
		m.mu.Lock()
		if m.closed {
			m.mu.Unlock()
			return nil, ErrClosed
		}
		prev := m.tokens[key]
		m.wg.Add(1)
		m.mu.Unlock()
		defer m.wg.Done()

		fctx, cancel := context.WithTimeout(m.ctx, m.tokenTimeout)
		defer cancel()
		t, err := fetch(fctx)

		m.mu.Lock()
		defer m.mu.Unlock()
		if err != nil {
			if m.ctx.Err() != nil {
				return nil, fmt.Errorf("%w: %w", ErrClosed, err)
			}
			if m.failureBackoff > 0 {
				m.failures[key] = failure{err: err, until: m.now().Add(m.failureBackoff)}
			}
			return nil, err
		}
		delete(m.failures, key)
		m.sweepLocked()
		m.tokens[key] = t
		if prev != nil || rejected != 0 {
			m.refreshes.Add(1)
			if prev != nil && prev.id != rejected && prev.remaining(m.now()) > 0 {
				m.proactive.Add(1)
			}
		}
		return t, nil
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.(*token), nil
	case <-ctx.Done():
		return nil, fmt.Errorf("authbridge: waiting for a token: %w", ctx.Err())
	}
}

// lookupCached is the cache half of cachedOrFetch; done reports whether it
// answered (with a token, a remembered failure, or ErrClosed).
func (m *Manager) lookupCached(key string, minValidity time.Duration, rejected uint64) (t *token, done bool, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, true, ErrClosed
	}
	now := m.now()
	if t := m.tokens[key]; t != nil && t.id != rejected && t.usable(now, minValidity) {
		return t, true, nil
	}
	if f, ok := m.failures[key]; ok {
		if now.Before(f.until) {
			return nil, true, fmt.Errorf("%w (failed %s ago; next attempt after the %s backoff)", f.err, now.Sub(f.until.Add(-m.failureBackoff)).Round(time.Millisecond), m.failureBackoff)
		}
		delete(m.failures, key)
	}
	return nil, false, nil
}

// sweepLocked forgets tokens expired for over a minute and old failures, so
// that a long-running daemon pulling many images does not accumulate them.
// Needs m.mu.
func (m *Manager) sweepLocked() {
	now := m.now()
	for k, t := range m.tokens {
		if t.remaining(now) < -time.Minute {
			delete(m.tokens, k)
		}
	}
	for k, f := range m.failures {
		if !now.Before(f.until) {
			delete(m.failures, k)
		}
	}
}

// fetchBearer exchanges the credential for a token from the token server.
func (m *Manager) fetchBearer(ctx context.Context, t *Transport, auth hostAuth, source string) (*token, error) {
	cred, err := m.credential(t.ref, source)
	if err != nil {
		return nil, err
	}
	if !cred.IsZero() && auth.realm.Scheme == "http" && m.host(t.host).scheme == "https" {
		return nil, fmt.Errorf("%w: registry %s is reached over https but its token realm %s is plain http; refusing to send credentials there", ErrBadChallenge, t.host, redactURL(auth.realm))
	}
	tr := tokenRequest{realm: auth.realm, service: auth.service, scopes: []string{t.scope}, cred: cred, clientID: m.clientID}
	start := m.now()
	var answer tokenAnswer
	realm := auth.realm.String()
	m.mu.Lock()
	usePOST := cred.IdentityToken != "" && !m.noPOST[realm]
	m.mu.Unlock()
	if usePOST {
		m.tokenFetches.Add(1)
		answer, err = postToken(ctx, m.tokenClient, tr)
		var unsupported errPOSTUnsupported
		if errors.As(err, &unsupported) {
			m.postFallbacks.Add(1)
			m.mu.Lock()
			m.noPOST[realm] = true
			m.mu.Unlock()
			m.log.WithFields(logrus.Fields{"registry": t.host, "realm": redactURL(auth.realm)}).Debug("Token server has no OAuth2 POST, using GET")
			usePOST = false
		}
	}
	if !usePOST {
		m.tokenFetches.Add(1)
		answer, err = getToken(ctx, m.tokenClient, tr)
	}
	if err != nil {
		m.tokenFetchFailures.Add(1)
		err = fmt.Errorf("fetching token for %s %s with %s credentials: %w", t.host, t.scope, cred.kind(), err)
		m.log.WithFields(logrus.Fields{"registry": t.host, "scope": t.scope}).WithError(err).Debug("Token fetch failed")
		return nil, err
	}
	issued, expiry, lifetime := answer.validity(start)
	m.log.WithFields(logrus.Fields{
		"registry": t.host, "scope": t.scope, "credentials": cred.kind(), "lifetime": lifetime, "expires": expiry.Format(time.RFC3339),
	}).Debug("Fetched registry token")
	return &token{
		id:       m.nextID.Add(1),
		header:   "Bearer " + answer.bearer(),
		issued:   issued,
		expiry:   expiry,
		lifetime: lifetime,
	}, nil
}

// fetchBasic reads the credential for a Basic-only registry.
func (m *Manager) fetchBasic(t *Transport, source string) (*token, error) {
	cred, err := m.credential(t.ref, source)
	if err != nil {
		return nil, err
	}
	if cred.IdentityToken != "" || (cred.Username == "" && cred.Password == "") {
		return nil, fmt.Errorf("%w: %s requires Basic authentication and no user name and password are configured for %s", ErrUnauthorized, t.host, t.ref.Name())
	}
	now := m.now()
	return &token{
		id:       m.nextID.Add(1),
		header:   "Basic " + base64.StdEncoding.EncodeToString([]byte(cred.Username+":"+cred.Password)),
		issued:   now,
		expiry:   now.Add(BasicCredentialTTL),
		lifetime: BasicCredentialTTL,
	}, nil
}
