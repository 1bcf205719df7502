package remote

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containers/image/v5/docker/reference"
	"github.com/containers/image/v5/pkg/sysregistriesv2"
	"github.com/containers/image/v5/types"
	digest "github.com/opencontainers/go-digest"
)

// Options configure a Client. The zero value is usable: every field documents
// its default.
type Options struct {
	// Version is put into the User-Agent "lazypull/<Version>". Default "dev".
	Version string
	// Auth supplies the authorization per repository. Default
	// AnonymousAuthFunc.
	Auth AuthFunc
	// InsecureRegistries are registries (host[:port] as written in image
	// references, e.g. "127.0.0.1:5000") that are contacted over https
	// without certificate verification, falling back to plain http, as
	// podman does for `insecure = true`. Default none.
	InsecureRegistries []string
	// RegistriesConf is the path of a registries.conf(5) whose `insecure`
	// and `blocked` settings apply in addition to InsecureRegistries.
	// Default "": no registries.conf is read.
	RegistriesConf string
	// RegistriesConfDir is the registries.conf.d drop-in directory read
	// with RegistriesConf. Default "": none.
	RegistriesConfDir string
	// Transport is the base transport under every request. Default: a
	// clone of http.DefaultTransport with keep-alives, HTTP/2,
	// MaxIdleConnsPerHost 32 and a 30 s response-header timeout, with
	// certificate verification switched off for insecure registries only.
	// When set, it is used as is for all hosts (tests inject fakes here).
	Transport http.RoundTripper
	// RequestTimeout bounds one request for a manifest, config, referrers
	// list or small blob, body included. Default 2 minutes.
	RequestTimeout time.Duration
	// IdleTimeout aborts a blob range read or stream when no byte arrives
	// for this long (then it is retried or resumed); such reads have no
	// total timeout. Default 60 seconds.
	IdleTimeout time.Duration
	// MaxAttempts is the number of attempts per operation, retries
	// included. Default 5.
	MaxAttempts int
	// BackoffBase is the delay before the first retry; it doubles with each
	// further retry (with jitter) up to BackoffMax. Defaults 200 ms and 10 s.
	BackoffBase time.Duration
	BackoffMax  time.Duration
	// MaxRetryAfter caps how long a Retry-After header can make the client
	// wait. Default 60 seconds.
	MaxRetryAfter time.Duration
	// RedirectTTL is how long a blob's redirect location (usually a signed
	// object-storage URL) is reused before asking the registry again.
	// Default 15 minutes.
	RedirectTTL time.Duration
	// MaxRangesPerRequest caps the ranges of one multi-range request.
	// Default 32.
	MaxRangesPerRequest int
	// MaxParallelRequests caps the concurrent requests of one ReadRanges
	// call. Default 4.
	MaxParallelRequests int
	// RangeMergeGap merges requested ranges separated by at most this many
	// bytes into one (the gap is downloaded and dropped). Default 0: only
	// overlapping or adjacent ranges are merged.
	RangeMergeGap int64
	// MaxManifestSize limits manifests and image configs. Default 4 MiB.
	MaxManifestSize int64
	// MaxBlobInMemory limits GetBlob. Default 64 MiB.
	MaxBlobInMemory int64
	// OS, Architecture and Variant choose the instance of a manifest list.
	// Defaults: the host's (runtime.GOOS, runtime.GOARCH, detected variant),
	// chosen exactly as podman does.
	OS, Architecture, Variant string
	// Clock supplies time and sleeping. Default: the real clock.
	Clock Clock
}

// Clock is the client's source of time; tests inject a fake one.
type Clock interface {
	Now() time.Time
	// Sleep waits for d or until ctx is done (then it returns ctx.Err()).
	Sleep(ctx context.Context, d time.Duration) error
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

func (realClock) Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (o *Options) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	if o.Version == "" {
		o.Version = "dev"
	}
	if o.Auth == nil {
		o.Auth = AnonymousAuthFunc
	}
	def(&o.RequestTimeout, 2*time.Minute)
	def(&o.IdleTimeout, time.Minute)
	def(&o.BackoffBase, 200*time.Millisecond)
	def(&o.BackoffMax, 10*time.Second)
	def(&o.MaxRetryAfter, time.Minute)
	def(&o.RedirectTTL, 15*time.Minute)
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = 5
	}
	if o.MaxRangesPerRequest <= 0 {
		o.MaxRangesPerRequest = 32
	}
	if o.MaxParallelRequests <= 0 {
		o.MaxParallelRequests = 4
	}
	if o.RangeMergeGap < 0 {
		o.RangeMergeGap = 0
	}
	if o.MaxManifestSize <= 0 {
		o.MaxManifestSize = 4 << 20
	}
	if o.MaxBlobInMemory <= 0 {
		o.MaxBlobInMemory = 64 << 20
	}
	if o.Clock == nil {
		o.Clock = realClock{}
	}
}

// Client talks to OCI distribution registries. It is safe for concurrent
// use; create one per process and share it.
type Client struct {
	opts      Options
	userAgent string
	base      http.RoundTripper // routes to secure or insecure TLS transports
	noFollow  func(*http.Request, []*http.Request) error
	sys       *types.SystemContext // nil unless RegistriesConf is set
	stats     counters

	// mu guards the maps below.
	mu         sync.Mutex
	registries map[string]*registry  // by reference domain
	auths      map[string]Auth       // by image reference + actions
	locations  map[string]location   // blob redirect targets, by host/repo@digest
	insecure   map[string]bool       // hosts contacted without TLS verification
	caps       map[string]*rangeCaps // range capabilities by registry host
	transports []*http.Transport     // to close idle connections on Close
}

// NewClient returns a client configured by opts.
func NewClient(opts Options) (*Client, error) {
	opts.setDefaults()
	c := &Client{
		opts:       opts,
		userAgent:  "lazypull/" + opts.Version,
		noFollow:   func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		registries: map[string]*registry{},
		auths:      map[string]Auth{},
		locations:  map[string]location{},
		insecure:   map[string]bool{},
		caps:       map[string]*rangeCaps{},
	}
	if opts.RegistriesConf != "" {
		c.sys = &types.SystemContext{
			SystemRegistriesConfPath:    opts.RegistriesConf,
			SystemRegistriesConfDirPath: opts.RegistriesConfDir,
		}
		if opts.RegistriesConfDir == "" {
			// A directory that cannot exist: read no drop-ins.
			c.sys.SystemRegistriesConfDirPath = "/nonexistent/lazypull-registries.conf.d"
		}
		if _, err := sysregistriesv2.FindRegistry(c.sys, "localhost"); err != nil { // load and check it now
			return nil, fmt.Errorf("registry client: load %s: %w", opts.RegistriesConf, err)
		}
	}
	if opts.Transport != nil {
		c.base = opts.Transport
	} else {
		secure := newTransport(false)
		insecure := newTransport(true)
		c.transports = []*http.Transport{secure, insecure}
		c.base = &hostRouter{c: c, secure: secure, insecure: insecure}
	}
	return c, nil
}

// Close releases idle connections. In-flight requests are not affected.
func (c *Client) Close() error {
	for _, t := range c.transports {
		t.CloseIdleConnections()
	}
	return nil
}

// BaseTransport is the transport the client sends requests through (what
// AuthFunc receives as base).
func (c *Client) BaseTransport() http.RoundTripper { return c.base }

func newTransport(skipVerify bool) *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DialContext = (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	t.ForceAttemptHTTP2 = true
	t.MaxIdleConns = 256
	t.MaxIdleConnsPerHost = 32
	t.IdleConnTimeout = 90 * time.Second
	t.TLSHandshakeTimeout = 15 * time.Second
	t.ResponseHeaderTimeout = 30 * time.Second
	t.ExpectContinueTimeout = time.Second
	if skipVerify {
		t.TLSClientConfig = &tls.Config{InsecureSkipVerify: true} //nolint:gosec // registries marked insecure by the user
	}
	return t
}

// hostRouter sends requests for insecure hosts through the transport that
// skips certificate verification.
type hostRouter struct {
	c                *Client
	secure, insecure http.RoundTripper
}

func (h *hostRouter) RoundTrip(req *http.Request) (*http.Response, error) {
	h.c.mu.Lock()
	insecure := h.c.insecure[req.URL.Host]
	h.c.mu.Unlock()
	if insecure {
		return h.insecure.RoundTrip(req)
	}
	return h.secure.RoundTrip(req)
}

// registry is what the client knows about one registry endpoint.
type registry struct {
	host     string // endpoint host[:port]
	insecure bool

	// mu guards scheme.
	mu     sync.Mutex
	scheme string // "" until known
}

// endpointHost maps a reference domain to the host serving its API.
func endpointHost(domain string) string {
	if domain == "docker.io" {
		return "registry-1.docker.io"
	}
	return domain
}

// registryFor returns the registry state for ref's domain.
func (c *Client) registryFor(ref reference.Named) (*registry, error) {
	domain := reference.Domain(ref)
	c.mu.Lock()
	r, ok := c.registries[domain]
	c.mu.Unlock()
	if ok {
		return r, nil
	}
	insecure := false
	for _, h := range c.opts.InsecureRegistries {
		if strings.EqualFold(h, domain) {
			insecure = true
		}
	}
	if c.sys != nil {
		reg, err := sysregistriesv2.FindRegistry(c.sys, ref.Name())
		if err != nil {
			return nil, fmt.Errorf("registries.conf: %w", err)
		}
		if reg != nil {
			if reg.Blocked {
				return nil, fmt.Errorf("%s: %w by %s", domain, ErrBlocked, c.opts.RegistriesConf)
			}
			insecure = insecure || reg.Insecure
		}
	}
	r = &registry{host: endpointHost(domain), insecure: insecure}
	c.mu.Lock()
	defer c.mu.Unlock()
	if prev, ok := c.registries[domain]; ok {
		return prev, nil
	}
	c.registries[domain] = r
	if insecure {
		c.insecure[r.host] = true
	}
	return r, nil
}

// schemeFor returns the URL scheme of r: https, or for insecure registries
// whatever answers a ping first (https without verification, then http).
func (c *Client) schemeFor(ctx context.Context, r *registry) (string, error) {
	if !r.insecure {
		return "https", nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.scheme != "" {
		return r.scheme, nil
	}
	var errs []error
	for _, scheme := range []string{"https", "http"} {
		if err := c.ping(ctx, scheme, r.host); err != nil {
			errs = append(errs, err)
			continue
		}
		r.scheme = scheme
		return scheme, nil
	}
	return "", fmt.Errorf("ping registry %s: %w", r.host, errors.Join(errs...))
}

func (c *Client) ping(ctx context.Context, scheme, host string) error {
	ctx, cancel := context.WithTimeout(ctx, c.opts.RequestTimeout)
	defer cancel()
	u := &url.URL{Scheme: scheme, Host: host, Path: "/v2/"}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return err
	}
	req.Header.Set("User-Agent", c.userAgent)
	c.stats.requests.Add(1)
	resp, err := (&http.Client{Transport: c.base, CheckRedirect: c.noFollow}).Do(req)
	if err != nil {
		return redactError(err)
	}
	_ = resp.Body.Close()
	return nil // any HTTP answer shows that the scheme works
}

// authFor returns the (cached) Auth for ref and actions. The AuthFunc gets
// the whole reference, tag or digest included: credentials podman handed
// over are valid for exactly that reference (authbridge.Manager.Handover).
func (c *Client) authFor(ref reference.Named, actions []string) (Auth, error) {
	key := ref.String() + "|" + strings.Join(actions, ",")
	c.mu.Lock()
	a, ok := c.auths[key]
	c.mu.Unlock()
	if ok {
		return a, nil
	}
	a, err := c.opts.Auth(ref, actions, c.base)
	if err != nil {
		return nil, fmt.Errorf("authorize %s for %s: %w", ref.Name(), strings.Join(actions, ","), err)
	}
	if a == nil {
		return nil, fmt.Errorf("authorize %s: AuthFunc returned no Auth: %w", ref.Name(), ErrUnsupported)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if prev, ok := c.auths[key]; ok {
		return prev, nil
	}
	c.auths[key] = a
	return a, nil
}

var (
	pullActions     = []string{"pull"}
	pullPushActions = []string{"pull", "push"}
)

// repoClient sends requests about one repository.
type repoClient struct {
	c      *Client
	ref    reference.Named
	host   string // registry endpoint host
	scheme string
	name   string // repository path, e.g. library/alpine
	auth   Auth
}

func (c *Client) repo(ctx context.Context, ref reference.Named, actions []string) (*repoClient, error) {
	r, err := c.registryFor(ref)
	if err != nil {
		return nil, err
	}
	scheme, err := c.schemeFor(ctx, r)
	if err != nil {
		return nil, err
	}
	a, err := c.authFor(ref, actions)
	if err != nil {
		return nil, err
	}
	return &repoClient{c: c, ref: ref, host: r.host, scheme: scheme, name: reference.Path(ref), auth: a}, nil
}

// EnsureFresh asks the Auth of ref (pull) to keep its credentials valid for
// at least minValidity; call it before background batches of reads.
func (c *Client) EnsureFresh(ctx context.Context, ref reference.Named, minValidity time.Duration) error {
	a, err := c.authFor(ref, pullActions)
	if err != nil {
		return err
	}
	if err := a.EnsureFresh(ctx, minValidity); err != nil {
		return fmt.Errorf("refresh credentials for %s: %w", ref.Name(), err)
	}
	return nil
}

// Reauthenticate makes the next pull request about ref prove access with
// the credentials as they are now, if its Auth is a Reauthenticator (see
// there); call it before resolving an image for a new consumer.
func (c *Client) Reauthenticate(ref reference.Named) error {
	a, err := c.authFor(reference.TagNameOnly(ref), pullActions)
	if err != nil {
		return err
	}
	if r, ok := a.(Reauthenticator); ok {
		r.Reauthenticate()
	}
	return nil
}

// url builds a registry URL; path is relative to /v2/<name>/.
func (r *repoClient) url(path string, query url.Values) *url.URL {
	u := &url.URL{Scheme: r.scheme, Host: r.host, Path: "/v2/" + r.name + "/" + path}
	if query != nil {
		u.RawQuery = query.Encode()
	}
	return u
}

// send performs one request without following redirects. Requests for the
// registry host go through the Auth; requests for any other host (object
// storage after a redirect) go through the bare base transport, so no
// Authorization ever leaves the registry host.
func (r *repoClient) send(req *http.Request) (*http.Response, error) {
	req.Header.Set("User-Agent", r.c.userAgent)
	var rt http.RoundTripper = r.c.base
	if req.URL.Host == r.host && req.URL.Scheme == r.scheme {
		rt = r.auth
	}
	r.c.stats.requests.Add(1)
	resp, err := (&http.Client{Transport: rt, CheckRedirect: r.c.noFollow}).Do(req)
	if err != nil {
		return nil, redactError(err)
	}
	if resp.Request == nil { // some RoundTrippers leave it unset
		resp.Request = req
	}
	return resp, nil
}

// maxRedirects bounds redirect chains.
const maxRedirects = 10

// do sends method to u with header and follows redirects of GET and HEAD
// requests. It returns the final response and whether a redirect was
// followed (then resp.Request.URL is the final location).
func (r *repoClient) do(ctx context.Context, method string, u *url.URL, header http.Header) (*http.Response, bool, error) {
	redirected := false
	for hop := 0; ; hop++ {
		req, err := http.NewRequestWithContext(ctx, method, u.String(), nil)
		if err != nil {
			return nil, false, fmt.Errorf("%s %s: %w", method, redactURL(u), err)
		}
		for k, v := range header {
			req.Header[k] = v
		}
		resp, err := r.send(req)
		if err != nil {
			return nil, false, err
		}
		if !isRedirect(resp.StatusCode) || (method != http.MethodGet && method != http.MethodHead) {
			return resp, redirected, nil
		}
		next, err := redirectTarget(resp)
		if err != nil {
			return nil, false, err
		}
		if hop >= maxRedirects {
			return nil, false, fmt.Errorf("%s %s: more than %d redirects: %w", method, redactURL(u), maxRedirects, ErrInvalidResponse)
		}
		if r.c.isInsecureHost(u.Host) {
			r.c.markInsecure(next.Host)
		}
		u, redirected = next, true
	}
}

func isRedirect(code int) bool {
	switch code {
	case http.StatusMovedPermanently, http.StatusFound, http.StatusSeeOther,
		http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
		return true
	}
	return false
}

// redirectTarget resolves the Location of resp and closes its body.
func redirectTarget(resp *http.Response) (*url.URL, error) {
	defer resp.Body.Close()
	loc := resp.Header.Get("Location")
	if loc == "" {
		return nil, fmt.Errorf("%s %s: %d without Location: %w", resp.Request.Method, redactURL(resp.Request.URL), resp.StatusCode, ErrInvalidResponse)
	}
	next, err := resp.Request.URL.Parse(loc)
	if err != nil {
		return nil, fmt.Errorf("%s %s: bad Location: %w", resp.Request.Method, redactURL(resp.Request.URL), ErrInvalidResponse)
	}
	if next.Scheme != "http" && next.Scheme != "https" {
		return nil, fmt.Errorf("%s %s: redirect to scheme %q: %w", resp.Request.Method, redactURL(resp.Request.URL), next.Scheme, ErrUnsupported)
	}
	return next, nil
}

func (c *Client) isInsecureHost(host string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.insecure[host]
}

// markInsecure extends an insecure registry's TLS setting to the hosts it
// redirects to, like podman's per-registry HTTP client.
func (c *Client) markInsecure(host string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.insecure[host] = true
}

// verifyDigest checks that data hashes to want.
func verifyDigest(data []byte, want digest.Digest) error {
	if err := want.Validate(); err != nil {
		return fmt.Errorf("digest %q: %w", want, ErrUnsupported)
	}
	if got := want.Algorithm().FromBytes(data); got != want {
		return fmt.Errorf("content hashes to %s, want %s: %w", got, want, ErrDigestMismatch)
	}
	return nil
}

// platformContext is the SystemContext that selects list instances.
func (c *Client) platformContext() *types.SystemContext {
	return &types.SystemContext{
		OSChoice:           c.opts.OS,
		ArchitectureChoice: c.opts.Architecture,
		VariantChoice:      c.opts.Variant,
	}
}

// counters are the live statistics (see Stats).
type counters struct {
	requests, manifestBytes, rangeBytes, fullBytes, pushBytes atomic.Int64
	retries, redirects, reResolves, errors, multiFallbacks    atomic.Int64
}

// Stats is a snapshot of a client's counters since it was created.
type Stats struct {
	// Requests is the number of HTTP requests sent (redirect hops and
	// registry pings included, authentication exchanges excluded).
	Requests int64
	// ManifestBytes is the body bytes of manifests, referrer lists and
	// configs received.
	ManifestBytes int64
	// BlobRangeBytes is the body bytes of 206 answers to range reads.
	BlobRangeBytes int64
	// BlobFullBytes is the body bytes of whole-blob answers (streams,
	// GetBlob, and 200 answers to range requests, skipped bytes included).
	BlobFullBytes int64
	// PushBytes is the body bytes uploaded.
	PushBytes int64
	// Retries counts attempts after the first.
	Retries int64
	// Redirects counts blob redirect locations resolved through the
	// registry; RedirectReResolves counts those replacing a cached location
	// that expired or was rejected by the storage host.
	Redirects, RedirectReResolves int64
	// Errors counts operations that failed for good (not-found answers
	// excluded).
	Errors int64
	// MultiRangeFallbacks counts registries found not to support
	// multi-range requests.
	MultiRangeFallbacks int64
}

// Stats returns a snapshot of the counters.
func (c *Client) Stats() Stats {
	s := &c.stats
	return Stats{
		Requests:            s.requests.Load(),
		ManifestBytes:       s.manifestBytes.Load(),
		BlobRangeBytes:      s.rangeBytes.Load(),
		BlobFullBytes:       s.fullBytes.Load(),
		PushBytes:           s.pushBytes.Load(),
		Retries:             s.retries.Load(),
		Redirects:           s.redirects.Load(),
		RedirectReResolves:  s.reResolves.Load(),
		Errors:              s.errors.Load(),
		MultiRangeFallbacks: s.multiFallbacks.Load(),
	}
}
