package remote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containers/image/v5/docker/reference"
	"github.com/containers/image/v5/pkg/cli/environment"
	"github.com/containers/image/v5/pkg/sysregistriesv2"
	"github.com/containers/image/v5/types"
	digest "github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
)

// Options configure a Client. The zero value is usable: every field documents
// its default.
type Options struct {
	// Version is put into the User-Agent "lazypull/<Version>". Default "dev".
	Version string
	// Auth supplies the authorization per repository. Default
	// AnonymousAuthFunc.
	Auth AuthFunc
	// Log receives a warning when a mirror fails and is left out, and debug
	// lines about endpoint choices. Default: discarded.
	Log *logrus.Entry

	// InsecureRegistries are registries (host[:port] as written in image
	// references, e.g. "127.0.0.1:5000") that are contacted over https
	// without certificate verification, falling back to plain http, as
	// podman does for `insecure = true`. Default none.
	InsecureRegistries []string
	// RegistriesConf is the path of the registries.conf(5) that says how
	// registries are reached, read with containers/image exactly as podman
	// reads it: `blocked`, `insecure` (per registry and per mirror),
	// `location` rewrites of prefixes and wildcard subdomains, and
	// `[[registry.mirror]]` lists tried before the primary location (with
	// `pull-from-mirror` and `mirror-by-digest-only`). Default "": see
	// SystemRegistriesConf.
	RegistriesConf string
	// RegistriesConfDir is the registries.conf.d drop-in directory read
	// with RegistriesConf. Default "": none (with RegistriesConf set) or
	// podman's (with SystemRegistriesConf).
	RegistriesConfDir string
	// SystemRegistriesConf, when RegistriesConf is "", reads the
	// registries.conf podman reads: $CONTAINERS_REGISTRIES_CONF, else
	// $HOME/.config/containers/registries.conf if it exists, else
	// /etc/containers/registries.conf, with the drop-in directories podman
	// reads. Default false: no registries.conf at all.
	SystemRegistriesConf bool
	// CertsDir holds the TLS settings of registries as podman's certs.d
	// directories do (containers-certs.d(5)): <CertsDir>/<host[:port]>/ with
	// *.crt files (CAs trusted besides the system pool) and *.cert/*.key
	// pairs (client certificates). Default "": podman's directories, the
	// first of $HOME/.config/containers/certs.d/<host[:port]>,
	// /etc/containers/certs.d/<host[:port]> and
	// /etc/docker/certs.d/<host[:port]> that exists.
	CertsDir string
	// Proxy returns the HTTP proxy for a request, as http.Transport.Proxy.
	// Default http.ProxyFromEnvironment: HTTPS_PROXY, HTTP_PROXY and
	// NO_PROXY as podman reads them (https registries are reached through a
	// CONNECT tunnel, so the proxy never sees credentials; localhost and
	// loopback addresses are never proxied).
	Proxy func(*http.Request) (*url.URL, error)
	// DialContext opens connections to registries and proxies. Default: a
	// net.Dialer with a 30 s timeout and keep-alives.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// Transport, when set, carries every request, for every host, as is
	// (tests inject fakes here); TLS settings and proxies are then its
	// business. Default: the client's own transports, per host, with the
	// TLS settings above.
	Transport http.RoundTripper

	// RequestTimeout bounds one request for a manifest, config, referrers
	// list or small blob, body included. Default 2 minutes.
	RequestTimeout time.Duration
	// FirstByteTimeout aborts a blob read when the registry has not
	// answered (headers) within it; then it is retried. Default 30 seconds.
	FirstByteTimeout time.Duration
	// IdleTimeout aborts a blob range read or stream when no byte arrives
	// for this long (then it is retried or resumed); such reads have no
	// total timeout. Default 60 seconds.
	IdleTimeout time.Duration
	// MirrorFirstByteTimeout is FirstByteTimeout for mirrors: a pull-through
	// cache may download a whole blob from upstream before it answers.
	// Default 10 minutes.
	MirrorFirstByteTimeout time.Duration
	// MirrorWarmup is how long a mirror may answer range requests for a blob
	// with the whole blob (200), as distribution's pull-through cache does
	// until it has stored the blob; meanwhile such answers serve the reads.
	// After that the mirror is left out for that blob (see MirrorSkipTTL).
	// Default 0: such a mirror is left out at its first whole-blob answer.
	MirrorWarmup time.Duration
	// MirrorRetryAfter is how long a mirror that failed as a whole
	// (unreachable, TLS, timeouts, 5xx, refused credentials) is left out
	// before it is tried again. Default 30 seconds.
	MirrorRetryAfter time.Duration
	// MirrorSkipTTL is how long a mirror that failed for one blob or
	// manifest (not found, wrong data, ranges not served) is left out for
	// it. Default 10 minutes.
	MirrorSkipTTL time.Duration

	// MaxAttempts is the number of attempts per operation, retries
	// included; an attempt tries the mirrors once each, then the primary
	// location. Default 5.
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
	if o.Log == nil {
		l := logrus.New()
		l.SetOutput(io.Discard)
		o.Log = logrus.NewEntry(l)
	}
	if o.Proxy == nil {
		o.Proxy = http.ProxyFromEnvironment
	}
	if o.DialContext == nil {
		o.DialContext = defaultDialer.DialContext
	}
	def(&o.RequestTimeout, 2*time.Minute)
	def(&o.FirstByteTimeout, 30*time.Second)
	def(&o.IdleTimeout, time.Minute)
	def(&o.MirrorFirstByteTimeout, 10*time.Minute)
	def(&o.MirrorRetryAfter, 30*time.Second)
	def(&o.MirrorSkipTTL, 10*time.Minute)
	def(&o.BackoffBase, 200*time.Millisecond)
	def(&o.BackoffMax, 10*time.Second)
	def(&o.MaxRetryAfter, time.Minute)
	def(&o.RedirectTTL, 15*time.Minute)
	if o.MirrorWarmup < 0 {
		o.MirrorWarmup = 0
	}
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

// noDropIns is a drop-in directory that cannot exist: with it, no drop-ins
// are read.
const noDropIns = "/nonexistent/lazypull-registries.conf.d"

// Client talks to OCI distribution registries, reaching them as podman
// does: through the mirrors and rewrites of registries.conf, with the TLS
// settings of certs.d and the proxies of the environment. It is safe for
// concurrent use; create one per process and share it.
type Client struct {
	opts      Options
	log       *logrus.Entry
	userAgent string
	noFollow  func(*http.Request, []*http.Request) error
	sys       *types.SystemContext // nil when no registries.conf is read
	stats     counters
	health    endpointHealth

	insecureOnce  sync.Once
	insecureHosts map[string]bool // hosts marked insecure in registries.conf

	// mu guards the maps below.
	mu            sync.Mutex
	endpointCache map[string][]*endpoint // by image reference
	schemes       map[string]*hostScheme // by host and TLS setting
	auths         map[string]Auth        // by endpoint reference + actions
	locations     map[string]location    // blob redirect targets, by host/repo@digest
	caps          map[string]*rangeCaps  // range capabilities by registry host
	transports    map[transportKey]*http.Transport
}

// NewClient returns a client configured by opts. It reads and checks the
// registries.conf at once.
func NewClient(opts Options) (*Client, error) {
	opts.setDefaults()
	c := &Client{
		opts:          opts,
		log:           opts.Log,
		userAgent:     "lazypull/" + opts.Version,
		noFollow:      func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		endpointCache: map[string][]*endpoint{},
		schemes:       map[string]*hostScheme{},
		auths:         map[string]Auth{},
		locations:     map[string]location{},
		caps:          map[string]*rangeCaps{},
		transports:    map[transportKey]*http.Transport{},
		health: endpointHealth{down: map[string]time.Time{}, skip: map[string]time.Time{},
			whole: map[string]time.Time{}},
	}
	switch {
	case opts.RegistriesConf != "":
		c.sys = &types.SystemContext{
			SystemRegistriesConfPath:    opts.RegistriesConf,
			SystemRegistriesConfDirPath: opts.RegistriesConfDir,
		}
		if opts.RegistriesConfDir == "" {
			c.sys.SystemRegistriesConfDirPath = noDropIns
		}
	case opts.SystemRegistriesConf:
		c.sys = &types.SystemContext{SystemRegistriesConfDirPath: opts.RegistriesConfDir}
		if err := environment.UpdateRegistriesConf(c.sys); err != nil { // CONTAINERS_REGISTRIES_CONF
			return nil, fmt.Errorf("registry client: %w", err)
		}
	}
	if c.sys != nil {
		if _, err := sysregistriesv2.GetRegistries(c.sys); err != nil { // load and check it now
			return nil, fmt.Errorf("registry client: load %s: %w", sysregistriesv2.ConfigurationSourceDescription(c.sys), err)
		}
	}
	return c, nil
}

// Close releases idle connections. In-flight requests are not affected.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, t := range c.transports {
		t.CloseIdleConnections()
	}
	return nil
}

// hostScheme is the URL scheme of an endpoint host, once known.
type hostScheme struct {
	// sem (one slot) serializes the pings of a host; waiting for it ends
	// with the caller's context (a ping of a host that hangs must not
	// hold up callers with shorter deadlines).
	sem    chan struct{}
	scheme string // "" until known; guarded by sem
}

// schemeFor returns the URL scheme of ep: https, or for insecure endpoints
// whatever answers a ping first (https without verification, then http).
func (c *Client) schemeFor(ctx context.Context, ep *endpoint) (string, error) {
	if !ep.insecure {
		return "https", nil
	}
	key := ep.host + "|insecure"
	c.mu.Lock()
	hs, ok := c.schemes[key]
	if !ok {
		hs = &hostScheme{sem: make(chan struct{}, 1)}
		c.schemes[key] = hs
	}
	c.mu.Unlock()
	select {
	case hs.sem <- struct{}{}:
	case <-ctx.Done():
		return "", fmt.Errorf("ping registry %s: %w", ep.host, ctx.Err())
	}
	defer func() { <-hs.sem }()
	if hs.scheme != "" {
		return hs.scheme, nil
	}
	var errs []error
	for _, scheme := range []string{"https", "http"} {
		if err := c.ping(ctx, ep, scheme); err != nil {
			errs = append(errs, err)
			continue
		}
		hs.scheme = scheme
		return scheme, nil
	}
	return "", fmt.Errorf("ping registry %s: %w", ep.host, errors.Join(errs...))
}

func (c *Client) ping(ctx context.Context, ep *endpoint, scheme string) error {
	ctx, cancel := context.WithTimeout(ctx, c.opts.RequestTimeout)
	defer cancel()
	u := &url.URL{Scheme: scheme, Host: ep.host, Path: "/v2/"}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return err
	}
	req.Header.Set("User-Agent", c.userAgent)
	c.stats.requests.Add(1)
	resp, err := (&http.Client{Transport: c.baseFor(ep), CheckRedirect: c.noFollow}).Do(req)
	if err != nil {
		return redactError(err)
	}
	_ = resp.Body.Close()
	return nil // any HTTP answer shows that the scheme works
}

// baseFor is the transport of ep's requests: Options.Transport when set.
func (c *Client) baseFor(ep *endpoint) http.RoundTripper {
	if c.opts.Transport != nil {
		return c.opts.Transport
	}
	return ep.base
}

// authFor returns the (cached) Auth for ep and actions. The AuthFunc gets
// the endpoint's whole reference, tag or digest included: credentials podman
// handed over are valid for exactly that reference
// (authbridge.Manager.Handover), and a mirror's credentials are looked up for
// the mirror's reference, as podman does.
func (c *Client) authFor(ep *endpoint, actions []string) (Auth, error) {
	ref := ep.ref
	key := ref.String() + "|" + strings.Join(actions, ",")
	c.mu.Lock()
	a, ok := c.auths[key]
	c.mu.Unlock()
	if ok {
		return a, nil
	}
	a, err := c.opts.Auth(ref, actions, c.baseFor(ep))
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

// repoClient sends requests about one repository at one endpoint.
type repoClient struct {
	c      *Client
	ep     *endpoint
	host   string // registry endpoint host
	scheme string
	name   string // repository path, e.g. library/alpine
	auth   Auth
	// firstByte bounds the wait for the answer to a blob read.
	firstByte time.Duration
	// last: no other endpoint follows (a whole-blob answer to a range
	// request is then used however long it lasts).
	last bool
}

// repoOn returns the repoClient for ep; last says whether ep is the last
// endpoint tried.
func (c *Client) repoOn(ctx context.Context, ep *endpoint, actions []string, last bool) (*repoClient, error) {
	scheme, err := c.schemeFor(ctx, ep)
	if err != nil {
		return nil, err
	}
	a, err := c.authFor(ep, actions)
	if err != nil {
		return nil, err
	}
	rc := &repoClient{c: c, ep: ep, host: ep.host, scheme: scheme, name: reference.Path(ep.ref), auth: a,
		firstByte: c.opts.FirstByteTimeout, last: last}
	if ep.mirror {
		rc.firstByte = c.opts.MirrorFirstByteTimeout
	}
	return rc, nil
}

// pushRepo returns the repoClient for pushing to ref.
func (c *Client) pushRepo(ctx context.Context, ref reference.Named) (*repoClient, error) {
	ep, err := c.pushEndpoint(ref)
	if err != nil {
		return nil, err
	}
	return c.repoOn(ctx, ep, pullPushActions, true)
}

// EnsureFresh asks the Auths of ref (pull) to keep their credentials valid
// for at least minValidity; call it before background batches of reads. It
// refreshes every endpoint reads may go to (the mirrors not left out, and
// the primary location) and fails only when none could be refreshed.
func (c *Client) EnsureFresh(ctx context.Context, ref reference.Named, minValidity time.Duration) error {
	eps, err := c.endpoints(ref)
	if err != nil {
		return err
	}
	var (
		errs  []error
		tried int
	)
	for i, ep := range eps {
		if i < len(eps)-1 && !c.usable(ep, "") {
			continue
		}
		tried++
		a, err := c.authFor(ep, pullActions)
		if err == nil {
			err = a.EnsureFresh(ctx, minValidity)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("refresh credentials for %s: %w", ep.name(), err))
		}
	}
	if len(errs) == tried {
		return errors.Join(errs...)
	}
	return nil
}

// Reauthenticate makes the next pull request about ref prove access with
// the credentials as they are now, at every endpoint, if its Auth is a
// Reauthenticator (see there); call it before resolving an image for a new
// consumer.
func (c *Client) Reauthenticate(ref reference.Named) error {
	ref = reference.TagNameOnly(ref)
	eps, err := c.endpoints(ref)
	if err != nil {
		return err
	}
	for _, ep := range eps {
		a, err := c.authFor(ep, pullActions)
		if err != nil {
			return err
		}
		if r, ok := a.(Reauthenticator); ok {
			r.Reauthenticate()
		}
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
	rt := r.c.baseFor(r.ep)
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
// followed (then resp.Request.URL is the final location). A redirect never
// lowers security: the target host gets its own TLS settings (verified,
// unless that host itself is configured insecure), and a redirect from https
// to plain http is refused unless the target is configured insecure.
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
		if u.Scheme == "https" && next.Scheme == "http" && !r.c.configuredInsecure(next.Host) {
			return nil, false, fmt.Errorf("%s %s: redirect from https to plain http %s refused: %w",
				method, redactURL(u), redactURL(next), ErrInsecureRedirect)
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
	mirrorFallbacks                                           atomic.Int64
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
	// MirrorFallbacks counts requests a mirror failed, so that the next
	// endpoint (another mirror or the primary location) was asked.
	MirrorFallbacks int64
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
		MirrorFallbacks:     s.mirrorFallbacks.Load(),
	}
}
