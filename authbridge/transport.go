package authbridge

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/containers/image/v5/docker/reference"
	"github.com/sirupsen/logrus"
)

// Transport is an http.RoundTripper that authenticates requests about one
// image reference to that image's registry host. Requests to any other host
// (redirect targets such as object storage) pass through to the base
// transport untouched, without Authorization.
//
// Transports are cheap: the challenges, tokens and failures they use are
// kept by their Manager, shared by every Transport with the same registry,
// scope and credential source. Safe for concurrent use.
type Transport struct {
	m     *Manager
	ref   reference.Named
	host  string // registry API host[:port], lower case
	scope string // "repository:<path>:<actions>"
	base  http.RoundTripper
}

var _ http.RoundTripper = (*Transport)(nil)

// Transport returns the round tripper for requests about ref with the given
// actions ("pull", "push"; entries may be comma-separated; default "pull").
// base sends the requests (nil: Options.HTTPTransport or its default).
//
// The registry's challenge is learned from its first 401 answer (or from a
// probe of GET /v2/ by EnsureFresh). Credentials come first from those podman
// handed over for exactly ref.String(), then from the auth files and helpers.
func (m *Manager) Transport(ref reference.Named, actions []string, base http.RoundTripper) *Transport {
	if base == nil {
		base = m.defaultBase
	}
	return &Transport{m: m, ref: ref, host: RegistryHost(ref), scope: scopeFor(ref, actions), base: base}
}

// RegistryHost returns the host[:port] that serves the registry API for ref:
// the reference's domain, except registry-1.docker.io for docker.io.
func RegistryHost(ref reference.Named) string {
	d := strings.ToLower(reference.Domain(ref))
	if d == "docker.io" {
		return "registry-1.docker.io"
	}
	return d
}

// scopeFor builds the token scope "repository:<path>:<actions>" with sorted,
// de-duplicated actions.
func scopeFor(ref reference.Named, actions []string) string {
	set := map[string]bool{}
	for _, a := range actions {
		for _, part := range strings.Split(a, ",") {
			if part = strings.TrimSpace(part); part != "" {
				set[part] = true
			}
		}
	}
	if len(set) == 0 {
		set["pull"] = true
	}
	list := make([]string, 0, len(set))
	for a := range set {
		list = append(list, a)
	}
	sort.Strings(list)
	return "repository:" + reference.Path(ref) + ":" + strings.Join(list, ",")
}

// Host returns the registry host this Transport authenticates to.
func (t *Transport) Host() string { return t.host }

// String describes the Transport without secrets.
func (t *Transport) String() string {
	return fmt.Sprintf("authbridge.Transport{%s %s}", t.host, t.scope)
}

// isRegistryHost reports whether u addresses t's registry host (default
// ports ignored, case-insensitive).
func (t *Transport) isRegistryHost(u *url.URL) bool {
	host := strings.ToLower(u.Host)
	switch {
	case u.Scheme == "https" && strings.HasSuffix(host, ":443"):
		host = strings.TrimSuffix(host, ":443")
	case u.Scheme == "http" && strings.HasSuffix(host, ":80"):
		host = strings.TrimSuffix(host, ":80")
	}
	return host == t.host
}

// authUse is the authorization chosen for one request.
type authUse struct {
	key    string // cache key of the token; "" when no auth is sent
	id     uint64
	header string
}

// authorize returns what to send as Authorization for a request to t's host
// given the host's current scheme; rejected is the id of a token the registry
// just refused (0 for none).
func (t *Transport) authorize(ctx context.Context, minValidity time.Duration, rejected uint64) (authUse, error) {
	m := t.m
	hs := m.host(t.host)
	source := m.credentialSource(t.ref.String())
	key := t.tokenKey(hs, source)
	var fetch func(context.Context) (*token, error)
	switch hs.auth.scheme {
	case schemeBearer:
		fetch = func(ctx context.Context) (*token, error) { return m.fetchBearer(ctx, t, hs.auth, source) }
	case schemeBasic:
		fetch = func(context.Context) (*token, error) { return m.fetchBasic(t, source) }
	default:
		return authUse{}, nil
	}
	tok, err := m.cachedOrFetch(ctx, key, minValidity, rejected, fetch)
	if err != nil {
		return authUse{}, err
	}
	return authUse{key: key, id: tok.id, header: tok.header}, nil
}

// tokenKey is the cache key of the tokens t's requests use with the host
// state hs and credentials from source ("" when the host needs none).
func (t *Transport) tokenKey(hs hostState, source string) string {
	switch hs.auth.scheme {
	case schemeBearer:
		return "bearer\x00" + t.host + "\x00" + hs.auth.realm.String() + "\x00" + hs.auth.service + "\x00" + t.scope + "\x00" + source
	case schemeBasic:
		return "basic\x00" + t.host + "\x00" + reference.Path(t.ref) + "\x00" + source
	}
	return ""
}

// Reauthenticate drops the token (or Basic credentials) t's next request
// would start with, so that it obtains a new one with the credentials as they
// are now. Tokens are otherwise used until their refresh margin, so without
// this a lookup right after `podman logout`, or after another user logged
// in, would still prove access with a token obtained before. Requests in
// flight are not affected; Transports sharing the token fetch a new one too.
func (t *Transport) Reauthenticate() {
	m := t.m
	key := t.tokenKey(m.host(t.host), m.credentialSource(t.ref.String()))
	if key == "" {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.tokens, key)
}

// RoundTrip sends req, adding Authorization when req goes to the registry
// host. If the registry rejects the request (401, ECR-style 403 "expired",
// S3-style 400 ExpiredToken), the token is dropped, a fresh one fetched and
// the request sent once more, provided its body can be replayed; a second
// rejection is returned as an error wrapping ErrUnauthorized.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	if !t.isRegistryHost(req.URL) {
		return t.base.RoundTrip(req)
	}
	m := t.m
	ctx := req.Context()
	m.updateHost(t.host, func(hs *hostState) { hs.scheme = req.URL.Scheme })

	use, err := t.authorize(ctx, 0, 0)
	if err != nil {
		closeRequestBody(req)
		return nil, fmt.Errorf("authbridge: %s %s: %w", req.Method, redactURL(req.URL), err)
	}
	resp, err := t.send(req, use.header, req.Body)
	if err != nil {
		return nil, err
	}
	if !t.rejected(resp, use.header != "") {
		if use.header == "" && resp.StatusCode != http.StatusUnauthorized {
			m.updateHost(t.host, func(hs *hostState) {
				if hs.auth.scheme == schemeUnknown {
					hs.auth = hostAuth{scheme: schemeNone}
				}
			})
		}
		return resp, nil
	}
	m.rejections.Add(1)
	if resp.StatusCode == http.StatusUnauthorized {
		if err := t.learnChallenge(resp.Header); err != nil && use.header == "" {
			drainAndClose(resp.Body)
			return nil, fmt.Errorf("authbridge: %s %s: %w: %w", req.Method, redactURL(req.URL), ErrUnauthorized, err)
		}
	}
	if !replayable(req) {
		// The body is gone; let the caller see the rejection, but do not
		// start another request with the rejected token.
		if use.key != "" {
			m.dropToken(use.key, use.id)
		}
		return resp, nil
	}
	status := resp.StatusCode
	drainAndClose(resp.Body)
	if use.key != "" {
		m.dropToken(use.key, use.id)
	}
	m.retries.Add(1)
	m.log.WithFields(logrus.Fields{"registry": t.host, "scope": t.scope, "status": status}).Debug("Registry rejected the authorization, retrying with a fresh token")

	use, err = t.authorize(ctx, 0, use.id)
	if err != nil {
		return nil, fmt.Errorf("authbridge: %s %s: after HTTP %d: %w", req.Method, redactURL(req.URL), status, err)
	}
	body := req.Body
	if req.GetBody != nil {
		if body, err = req.GetBody(); err != nil {
			return nil, fmt.Errorf("authbridge: %s %s: replaying the body: %w", req.Method, redactURL(req.URL), err)
		}
	}
	resp, err = t.send(req, use.header, body)
	if err != nil {
		return nil, err
	}
	if t.rejected(resp, use.header != "") {
		m.rejections.Add(1)
		status := resp.StatusCode
		code := challengeError(resp.Header)
		drainAndClose(resp.Body)
		if use.key != "" {
			m.dropToken(use.key, use.id)
		}
		return nil, fmt.Errorf("%w: %s %s: registry answered HTTP %d%s with a fresh token", ErrUnauthorized, req.Method, redactURL(req.URL), status, code)
	}
	return resp, nil
}

// EnsureFresh makes sure the token for t's registry and scope stays valid for
// at least minValidity (and the usual safety margin), fetching a new one if
// not. The background prefetcher calls it before each batch. A token server
// granting shorter lifetimes than minValidity cannot do better: the freshly
// fetched token is accepted.
//
// If the registry's challenge is not known yet it is discovered with GET
// /v2/, over the scheme of the earlier requests to the host. Before any
// request to the host was made the scheme is unknown; then EnsureFresh does
// nothing, since the first request fetches a brand-new token anyway.
func (t *Transport) EnsureFresh(ctx context.Context, minValidity time.Duration) error {
	if t.m.isClosed() {
		return ErrClosed
	}
	hs := t.m.host(t.host)
	if hs.auth.scheme == schemeUnknown {
		if hs.scheme == "" {
			return nil
		}
		if err := t.probe(ctx, hs.scheme); err != nil {
			return err
		}
	}
	if _, err := t.authorize(ctx, minValidity, 0); err != nil {
		return fmt.Errorf("authbridge: refreshing token for %s %s: %w", t.host, t.scope, err)
	}
	return nil
}

// probe discovers the host's challenge with GET /v2/.
func (t *Transport) probe(ctx context.Context, scheme string) error {
	u := &url.URL{Scheme: scheme, Host: t.host, Path: "/v2/"}
	_, err, _ := t.m.flights.Do("probe\x00"+u.String(), func() (any, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
		if err != nil {
			return nil, fmt.Errorf("authbridge: probing %s: %w", u, err)
		}
		resp, err := t.base.RoundTrip(req)
		if err != nil {
			return nil, wrapSendError(req, err)
		}
		defer drainAndClose(resp.Body)
		switch resp.StatusCode {
		case http.StatusOK:
			t.m.updateHost(t.host, func(hs *hostState) { hs.auth = hostAuth{scheme: schemeNone} })
			return nil, nil
		case http.StatusUnauthorized:
			return nil, t.learnChallenge(resp.Header)
		default:
			return nil, fmt.Errorf("%w: probing %s: HTTP %d", ErrRegistryUnreachable, u, resp.StatusCode)
		}
	})
	return err
}

// learnChallenge records the challenge of a 401 answer for t's host.
func (t *Transport) learnChallenge(h http.Header) error {
	auth, err := pickChallenge(ParseChallenges(h))
	if err != nil {
		return fmt.Errorf("registry %s: %w", t.host, err)
	}
	t.m.updateHost(t.host, func(hs *hostState) { hs.auth = auth })
	return nil
}

// send sends a copy of req with body and the Authorization header (none if
// empty).
func (t *Transport) send(req *http.Request, header string, body io.ReadCloser) (*http.Response, error) {
	out := req.Clone(req.Context())
	out.Body = body
	if header != "" {
		out.Header.Set("Authorization", header)
	}
	resp, err := t.base.RoundTrip(out)
	if err != nil {
		return nil, wrapSendError(req, err)
	}
	return resp, nil
}

// wrapSendError adds the redacted request to a transport error and marks
// failures to reach the host.
func wrapSendError(req *http.Request, err error) error {
	if isNetworkError(err) {
		return fmt.Errorf("authbridge: %s %s: %w: %w", req.Method, redactURL(req.URL), ErrRegistryUnreachable, err)
	}
	return fmt.Errorf("authbridge: %s %s: %w", req.Method, redactURL(req.URL), err)
}

// rejectionPeek bounds how much of a 403/400 body is read to recognize an
// expired-token answer.
const rejectionPeek = 4096

// rejected reports whether resp refuses the authorization sent with it: 401,
// or, when a token was sent, 403 mentioning "expired" (ECR) or 400
// ExpiredToken (S3). For 403/400 the start of the body is read and put back.
func (t *Transport) rejected(resp *http.Response, sentAuth bool) bool {
	switch resp.StatusCode {
	case http.StatusUnauthorized:
		return true
	case http.StatusForbidden, http.StatusBadRequest:
		if !sentAuth {
			return false
		}
	default:
		return false
	}
	peek, err := io.ReadAll(io.LimitReader(resp.Body, rejectionPeek))
	resp.Body = &peekedBody{Reader: io.MultiReader(bytes.NewReader(peek), resp.Body), closer: resp.Body}
	if err != nil {
		return false
	}
	if resp.StatusCode == http.StatusForbidden {
		return bytes.Contains(bytes.ToLower(peek), []byte("expired"))
	}
	return bytes.Contains(peek, []byte("ExpiredToken"))
}

// peekedBody is a response body whose start was read and put back.
type peekedBody struct {
	io.Reader
	closer io.Closer
}

func (b *peekedBody) Close() error { return b.closer.Close() }

// challengeError returns `, error="..."` from a Bearer challenge, or "".
func challengeError(h http.Header) string {
	for _, c := range ParseChallenges(h) {
		if e := c.Params["error"]; e != "" {
			return fmt.Sprintf(" (%s)", e)
		}
	}
	return ""
}

// replayable reports whether req can be sent a second time.
func replayable(req *http.Request) bool {
	return req.Body == nil || req.Body == http.NoBody || req.GetBody != nil
}

func closeRequestBody(req *http.Request) {
	if req.Body != nil {
		_ = req.Body.Close()
	}
}

// drainAndClose reads a little of body so the connection can be reused, then
// closes it.
func drainAndClose(body io.ReadCloser) {
	_, _ = io.Copy(io.Discard, io.LimitReader(body, 64<<10))
	_ = body.Close()
}
