package authbridge

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lazypull/lazypull/authbridge/authtest"
)

// client is a Manager for a registry r, with credentials (if user != "")
// in the user's auth file.
func (r *registry) client(t *testing.T, fakeClock bool, user, password string) *Manager {
	t.Helper()
	e := newUserEnv(t)
	if user != "" {
		writeFile(t, filepath.Join(e.configHome, "containers", "auth.json"),
			authJSON(map[string]authEntry{r.proxy.Host(): {user, password, ""}}, nil))
	}
	o := e.options()
	if fakeClock {
		o.Now = r.clock.Now
	}
	return newManager(t, o)
}

// mustGet does a ranged GET of the test blob through tr and checks the body.
func (r *registry) mustGet(t *testing.T, tr http.RoundTripper, repo string) {
	t.Helper()
	status, body, err := get(context.Background(), tr, r.blobURL(repo), "bytes=9-17")
	if err != nil || status != http.StatusPartialContent || !bytes.Equal(body, r.data[9:18]) {
		t.Fatalf("GET %s: %d %q, %v; want 206 %q", repo, status, body, err, r.data[9:18])
	}
}

// TestProactiveRefresh checks with a fake clock that a request never starts
// with a token that has less than RefreshMargin left, and that the token is
// re-used until then; expires_in and issued_at decide the expiry.
func TestProactiveRefresh(t *testing.T) {
	tests := []struct {
		name     string
		lifetime time.Duration // real lifetime at the server
		setup    func(*authtest.TokenServer)
		refresh  time.Duration // when the client must fetch a new token
	}{
		{name: "5 min token, 20 % margin", lifetime: 5 * time.Minute, refresh: 4 * time.Minute},
		{name: "60 s token, 20 % margin", lifetime: time.Minute, refresh: 48 * time.Second},
		{name: "30 s token, 10 s minimum", lifetime: 30 * time.Second, refresh: 20 * time.Second},
		{name: "4 s token, half the lifetime", lifetime: 4 * time.Second, refresh: 2 * time.Second},
		{name: "expires_in absent means 60 s", lifetime: 10 * time.Minute, refresh: 48 * time.Second,
			setup: func(ts *authtest.TokenServer) { ts.SetOmitExpiresIn(true) }},
		{name: "issued_at honoured", lifetime: time.Minute, refresh: 18 * time.Second, // expires 30 s after receipt
			setup: func(ts *authtest.TokenServer) { ts.SetIssuedAtOffset(-30 * time.Second) }},
		{name: "issued_at absent: from receipt", lifetime: time.Minute, refresh: 48 * time.Second,
			setup: func(ts *authtest.TokenServer) { ts.SetOmitIssuedAt(true) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newRegistry(t, registryConfig{lifetime: tc.lifetime, fake: true})
			r.ts.SetAnonymousAccess("team/app", "pull")
			if tc.setup != nil {
				tc.setup(r.ts)
			}
			m := r.client(t, true, "", "")
			tr := m.Transport(r.ref(t, "team/app"), []string{"pull"}, nil)
			r.mustGet(t, tr, "team/app")
			r.clock.Advance(tc.refresh - time.Millisecond)
			r.mustGet(t, tr, "team/app")
			if got := r.ts.Stats().Issued; got != 1 {
				t.Errorf("1 ms before the refresh point: tokens issued = %d, want 1", got)
			}
			r.clock.Advance(2 * time.Millisecond)
			r.mustGet(t, tr, "team/app")
			if got := r.ts.Stats().Issued; got != 2 {
				t.Errorf("1 ms after the refresh point: tokens issued = %d, want 2", got)
			}
			st := m.Stats()
			if st.ProactiveRefreshes != 1 || st.Refreshes != 1 || st.Unauthorized401 != 1 {
				t.Errorf("Stats() = %+v, want 1 refresh, proactive, and only the first 401 (challenge discovery)", st)
			}
			if got := r.proxy.Stats().ExpiredTokens; got != 0 {
				t.Errorf("requests with expired tokens at the registry = %d, want 0", got)
			}
		})
	}
}

// TestHostileExpiresIn: a token server sending an absurd expires_in (past
// time.Duration's range, which overflowed into a negative lifetime and made
// every request fetch a token; a fraction; a string; garbage) costs one
// token for many requests and never fails the exchange.
func TestHostileExpiresIn(t *testing.T) {
	for _, tc := range []struct{ name, raw string }{
		{"max int64", `9223372036854775807`},
		{"1e30", `1e30`},
		{"fraction", `299.5`},
		{"string", `"300"`},
		{"garbage", `{"seconds": 300}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRegistry(t, registryConfig{lifetime: 48 * time.Hour, fake: true})
			r.ts.SetAnonymousAccess("team/app", "pull")
			r.ts.SetRawExpiresIn(json.RawMessage(tc.raw))
			m := r.client(t, true, "", "")
			tr := m.Transport(r.ref(t, "team/app"), []string{"pull"}, nil)
			for i := 0; i < 20; i++ {
				r.mustGet(t, tr, "team/app")
				r.clock.Advance(time.Second)
			}
			if got := r.ts.Stats().Issued; got != 1 {
				t.Errorf("20 requests over 20 s: %d tokens issued, want 1", got)
			}
			if st := m.Stats(); st.TokenFetchFailures != 0 {
				t.Errorf("Stats() = %+v, want no failed token fetch", st)
			}
		})
	}
}

// TestConcurrentRequestsOneFetch: 100 goroutines starting at once cause a
// single token fetch.
func TestConcurrentRequestsOneFetch(t *testing.T) {
	r := newRegistry(t, registryConfig{lifetime: time.Minute})
	r.ts.AddUser("alice", secret("alice", "s3cr3t-concurrent"), map[string][]string{"team/app": {"pull"}})
	m := r.client(t, false, "alice", "s3cr3t-concurrent")
	tr := m.Transport(r.ref(t, "team/app"), []string{"pull"}, nil)
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	start := make(chan struct{})
	for range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			status, body, err := get(context.Background(), tr, r.blobURL("team/app"), "bytes=0-99")
			if err == nil && (status != http.StatusPartialContent || !bytes.Equal(body, r.data[:100])) {
				err = errors.New("wrong answer")
			}
			errs <- err
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("request: %v", err)
		}
	}
	if got := r.ts.Stats(); got.GETs != 1 || got.Issued != 1 {
		t.Errorf("token server stats = %+v, want one GET and one token", got)
	}
	if got := m.Stats().TokenFetches; got != 1 {
		t.Errorf("TokenFetches = %d, want 1", got)
	}
}

// TestRejectedTokenRetry: the token server's real lifetime (5 s) is shorter
// than the client believes (expires_in absent: 60 s), the containerd #6377
// situation. The registry's rejection (401, ECR 403, S3 400) makes the client
// drop the token, fetch a new one and retry once, successfully.
func TestRejectedTokenRetry(t *testing.T) {
	for _, style := range []authtest.ExpiryStyle{authtest.ExpiryUnauthorized, authtest.ExpiryECR, authtest.ExpiryS3} {
		r := newRegistry(t, registryConfig{lifetime: 5 * time.Second, fake: true, expiry: style})
		r.ts.SetOmitExpiresIn(true)
		r.ts.SetAnonymousAccess("team/app", "pull")
		m := r.client(t, true, "", "")
		tr := m.Transport(r.ref(t, "team/app"), nil, nil)
		r.mustGet(t, tr, "team/app")
		r.clock.Advance(6 * time.Second)
		r.mustGet(t, tr, "team/app")
		if got := r.proxy.Stats().ExpiredTokens; got != 1 {
			t.Errorf("style %d: expired tokens at the registry = %d, want 1", style, got)
		}
		st := m.Stats()
		// Two rejections: the challenge discovery and the expired token.
		if st.Unauthorized401 != 2 || st.Retries != 2 || st.Refreshes != 1 || st.ProactiveRefreshes != 0 || r.ts.Stats().Issued != 2 {
			t.Errorf("style %d: Stats() = %+v, tokens issued %d; want 2 rejections, 2 retries, 1 reactive refresh, 2 tokens", style, st, r.ts.Stats().Issued)
		}
	}
}

// TestSecondRejectionIsError: a token that the registry keeps rejecting
// (insufficient scope) gives one retry and then ErrUnauthorized, no loop.
func TestSecondRejectionIsError(t *testing.T) {
	r := newRegistry(t, registryConfig{lifetime: time.Minute})
	pw := secret("alice", "s3cr3t-scope")
	r.ts.AddUser("alice", pw, map[string][]string{"team/app": {"pull"}})
	m := r.client(t, false, "alice", pw)
	r.mustGet(t, m.Transport(r.ref(t, "team/app"), nil, nil), "team/app") // learns the challenge
	before := r.proxy.Stats()
	_, _, err := get(context.Background(), m.Transport(r.ref(t, "team/other"), nil, nil), r.blobURL("team/other"), "")
	if !errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), "insufficient_scope") {
		t.Errorf("GET without access: err = %v, want ErrUnauthorized mentioning insufficient_scope", err)
	}
	after := r.proxy.Stats()
	if got := after.Requests - before.Requests; got != 2 {
		t.Errorf("requests at the registry = %d, want 2 (one retry)", got)
	}
	if got := after.Denied - before.Denied; got != 2 {
		t.Errorf("denied requests = %d, want 2", got)
	}
}

// TestRedirectWithoutAuthorization: blob reads redirected to a storage host
// reach it without Authorization (Go's client would forward it to the same IP
// on another port).
func TestRedirectWithoutAuthorization(t *testing.T) {
	r := newRegistry(t, registryConfig{lifetime: time.Minute, redirect: true})
	pw := secret("alice", "s3cr3t-redirect")
	r.ts.AddUser("alice", pw, map[string][]string{"team/app": {"pull"}})
	m := r.client(t, false, "alice", pw)
	tr := m.Transport(r.ref(t, "team/app"), nil, nil)
	for range 3 {
		r.mustGet(t, tr, "team/app")
	}
	st := r.proxy.Stats()
	if st.Redirects != 3 || st.StorageRequests != 3 || st.StorageAuthViolations != 0 {
		t.Errorf("proxy stats = %+v, want 3 redirects, 3 storage requests, 0 violations", st)
	}
	// A request straight to another host passes through untouched.
	req, _ := http.NewRequest(http.MethodGet, r.proxy.StorageURL()+"/anything", nil)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(noteErr(err))
	}
	resp.Body.Close()
	if got := r.proxy.Stats().StorageAuthViolations; got != 0 {
		t.Errorf("storage auth violations = %d, want 0", got)
	}
}

// TestBasicRegistry covers Basic-only registries: right, wrong and missing
// credentials.
func TestBasicRegistry(t *testing.T) {
	pw := secret("basicuser", "s3cr3t-basic")
	tests := []struct {
		name     string
		user, pw string
		wantErr  error
	}{
		{"right password", "basicuser", pw, nil},
		{"wrong password", "basicuser", secret("basicuser", "s3cr3t-basic-wrong"), ErrUnauthorized},
		{"no credentials", "", "", ErrUnauthorized},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newRegistry(t, registryConfig{basic: map[string]string{"basicuser": pw}})
			m := r.client(t, false, tc.user, tc.pw)
			tr := m.Transport(r.ref(t, "team/app"), nil, nil)
			for i := range 2 {
				status, _, err := get(context.Background(), tr, r.blobURL("team/app"), "bytes=0-1")
				if !errors.Is(err, tc.wantErr) || (err == nil && status != http.StatusPartialContent) {
					t.Errorf("request %d: status %d, err %v; want %v", i, status, err, tc.wantErr)
				}
			}
			if tc.wantErr == nil && m.Stats().CredentialLookups != 1 {
				t.Errorf("CredentialLookups = %d, want 1 (cached for %v)", m.Stats().CredentialLookups, BasicCredentialTTL)
			}
		})
	}
}

// TestIdentityToken: an identity token is exchanged with the OAuth2
// refresh_token grant; without POST support the client falls back to GET and
// remembers it.
func TestIdentityToken(t *testing.T) {
	for _, post := range []bool{true, false} {
		r := newRegistry(t, registryConfig{lifetime: time.Minute, fake: true})
		r.ts.AddUser("oauthuser", secret("oauthuser", "s3cr3t-oauth-pw"), map[string][]string{"team/app": {"pull"}})
		idt := secret("oauthuser", "s3cr3t-oauth-identity")
		r.ts.AddIdentityToken("oauthuser", idt)
		r.ts.SetPOSTSupported(post)
		e := newUserEnv(t)
		writeFile(t, filepath.Join(e.runtimeDir, "containers", "auth.json"),
			authJSON(map[string]authEntry{r.proxy.Host(): {"oauthuser", "", idt}}, nil))
		o := e.options()
		o.Now = r.clock.Now
		m := newManager(t, o)
		tr := m.Transport(r.ref(t, "team/app"), nil, nil)
		r.mustGet(t, tr, "team/app")
		r.clock.Advance(time.Minute) // expired: a second fetch
		r.mustGet(t, tr, "team/app")
		ts, st := r.ts.Stats(), m.Stats()
		if post {
			if ts.POSTs != 2 || ts.GETs != 0 || st.POSTFallbacks != 0 {
				t.Errorf("POST supported: token server %+v, fallbacks %d; want 2 POSTs, no GET", ts, st.POSTFallbacks)
			}
		} else if ts.POSTs != 1 || ts.GETs != 2 || st.POSTFallbacks != 1 {
			t.Errorf("POST unsupported: token server %+v, fallbacks %d; want 1 POST, 2 GETs, 1 fallback", ts, st.POSTFallbacks)
		}
	}
}

// TestTokenFetchErrors checks the typed errors and the short failure
// backoff: a failure is remembered for FailureBackoff only, and a fixed
// auth file (podman login) is used right after.
func TestTokenFetchErrors(t *testing.T) {
	r := newRegistry(t, registryConfig{lifetime: time.Minute, fake: true})
	good := secret("alice", "s3cr3t-good")
	r.ts.AddUser("alice", good, map[string][]string{"team/app": {"pull"}})
	e := newUserEnv(t)
	authFile := filepath.Join(e.configHome, "containers", "auth.json")
	writeFile(t, authFile, authJSON(map[string]authEntry{r.proxy.Host(): {"alice", secret("alice", "s3cr3t-bad"), ""}}, nil))
	o := e.options()
	o.Now = r.clock.Now
	m := newManager(t, o)
	tr := m.Transport(r.ref(t, "team/app"), nil, nil)
	ctx := context.Background()

	_, _, err := get(ctx, tr, r.blobURL("team/app"), "")
	if !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("wrong password: err = %v, want ErrUnauthorized", err)
	}
	gets := r.ts.Stats().GETs
	writeFile(t, authFile, authJSON(map[string]authEntry{r.proxy.Host(): {"alice", good, ""}}, nil))
	if _, _, err := get(ctx, tr, r.blobURL("team/app"), ""); !errors.Is(err, ErrUnauthorized) {
		t.Errorf("within the backoff: err = %v, want the remembered ErrUnauthorized", err)
	}
	if got := r.ts.Stats().GETs; got != gets {
		t.Errorf("token requests within the backoff = %d, want 0", got-gets)
	}
	r.clock.Advance(DefaultFailureBackoff)
	r.mustGet(t, tr, "team/app")

	r.ts.SetDown(true)
	r.clock.Advance(time.Hour)
	if _, _, err := get(ctx, tr, r.blobURL("team/app"), ""); !errors.Is(err, ErrTokenServer) {
		t.Errorf("token server down: err = %v, want ErrTokenServer", err)
	}

	// A registry nobody listens on, and one whose name does not resolve.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := l.Addr().String()
	l.Close()
	for _, host := range []string{closedAddr, "registry.invalid"} {
		tr := m.Transport(mustRef(t, host+"/a/b:1"), nil, nil)
		cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		_, _, err := get(cctx, tr, "http://"+host+"/v2/a/b/blobs/sha256:"+strings.Repeat("0", 64), "")
		cancel()
		if !errors.Is(err, ErrRegistryUnreachable) {
			t.Errorf("registry %s: err = %v, want ErrRegistryUnreachable", host, err)
		}
		if err := tr.EnsureFresh(ctx, 0); !errors.Is(noteErr(err), ErrRegistryUnreachable) {
			t.Errorf("EnsureFresh on %s: err = %v, want ErrRegistryUnreachable", host, err)
		}
	}

	// A challenge naming a token server nobody listens on.
	bad := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="http://`+closedAddr+`/token",service="x"`)
		w.WriteHeader(http.StatusUnauthorized)
	}))
	defer bad.Close()
	host := strings.TrimPrefix(bad.URL, "http://")
	_, _, err = get(ctx, m.Transport(mustRef(t, host+"/a:1"), nil, nil), bad.URL+"/v2/a/manifests/1", "")
	if !errors.Is(err, ErrTokenServer) {
		t.Errorf("unreachable token server: err = %v, want ErrTokenServer", err)
	}
}

// TestEnsureFresh checks the prefetcher's hook: it refreshes a token that
// would not last minValidity, leaves a good one alone, and discovers the
// challenge by itself (here over TLS) when no request was made yet.
func TestEnsureFresh(t *testing.T) {
	r := newRegistry(t, registryConfig{lifetime: 5 * time.Minute, fake: true})
	r.ts.SetAnonymousAccess("team/app", "pull")
	m := r.client(t, true, "", "")
	tr := m.Transport(r.ref(t, "team/app"), nil, nil)
	ctx := context.Background()
	r.mustGet(t, tr, "team/app")
	steps := []struct {
		advance     time.Duration
		minValidity time.Duration
		wantIssued  uint64
	}{
		{0, time.Minute, 1},                     // 5 min left
		{100 * time.Second, 3 * time.Minute, 1}, // 200 s left
		{0, 4 * time.Minute, 2},                 // 200 s < 4 min: refresh
		{0, 4 * time.Minute, 2},                 // fresh token: 5 min left
		{0, 10 * time.Minute, 3},                // more than a token lives: one fetch, accepted
		{0, 0, 3},
	}
	for i, s := range steps {
		r.clock.Advance(s.advance)
		if err := tr.EnsureFresh(ctx, s.minValidity); err != nil {
			t.Fatalf("step %d: EnsureFresh: %v", i, noteErr(err))
		}
		if got := r.ts.Stats().Issued; got != s.wantIssued {
			t.Errorf("step %d: tokens issued = %d, want %d", i, got, s.wantIssued)
		}
	}
	if got := m.Stats().ProactiveRefreshes; got != 2 {
		t.Errorf("ProactiveRefreshes = %d, want 2", got)
	}

	// Over TLS: before any request EnsureFresh does nothing (the scheme is
	// unknown); after a request that failed to connect it probes /v2/.
	ts := authtest.NewTokenServer(t, authtest.TokenServerConfig{TLS: true})
	ts.SetAnonymousAccess("team/app", "pull")
	reg := authtest.NewBlobRegistry()
	reg.Put("team/app", r.data)
	p := authtest.NewAuthProxy(t, authtest.ProxyConfig{Upstream: reg, TokenServer: ts, TLS: true})
	e := newUserEnv(t)
	o := e.options()
	o.HTTPTransport = p.Client().Transport
	m2 := newManager(t, o)
	tr2 := m2.Transport(mustRef(t, p.Host()+"/team/app:1"), nil, nil)
	blob := p.URL() + "/v2/team/app/blobs/" + r.dgst.String()
	if err := tr2.EnsureFresh(ctx, time.Second); err != nil || p.Stats().Requests != 0 || ts.Stats().Issued != 0 {
		t.Fatalf("EnsureFresh before any request: %v, proxy %+v; want nil and no traffic", noteErr(err), p.Stats())
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, _, err := get(cancelled, tr2, blob, ""); err == nil {
		t.Fatal("GET with a cancelled context succeeded")
	}
	if err := tr2.EnsureFresh(ctx, time.Second); err != nil {
		t.Fatalf("EnsureFresh over TLS: %v", noteErr(err))
	}
	if got := ts.Stats().Issued; got != 1 {
		t.Errorf("tokens issued after EnsureFresh = %d, want 1", got)
	}
	status, _, err := get(ctx, tr2, blob, "bytes=0-3")
	if err != nil || status != http.StatusPartialContent {
		t.Errorf("GET after EnsureFresh: %d, %v; want 206", status, err)
	}
	if got := p.Stats(); got.NoAuth != 1 || got.Authorized != 1 {
		t.Errorf("proxy stats = %+v, want only the probe without a token", got)
	}

	// A registry without authentication: nothing to do.
	open := httptest.NewServer(reg)
	defer open.Close()
	tr3 := m2.Transport(mustRef(t, strings.TrimPrefix(open.URL, "http://")+"/team/app:1"), nil, nil)
	r3 := &registry{data: r.data, dgst: r.dgst}
	status, _, err = get(ctx, tr3, open.URL+"/v2/team/app/blobs/"+r3.dgst.String(), "bytes=0-3")
	if err != nil || status != http.StatusPartialContent {
		t.Fatalf("GET without auth: %d, %v", status, err)
	}
	if err := tr3.EnsureFresh(ctx, time.Minute); err != nil {
		t.Errorf("EnsureFresh without auth: %v", noteErr(err))
	}
}

// echoHandler answers 200 with the request body.
var echoHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(w, r.Body)
})

// TestBodyReplay: requests with a replayable body are retried after a
// rejection, others get the rejection back unchanged.
func TestBodyReplay(t *testing.T) {
	ts := authtest.NewTokenServer(t, authtest.TokenServerConfig{})
	ts.SetAnonymousAccess("team/app", "pull", "push")
	p := authtest.NewAuthProxy(t, authtest.ProxyConfig{Upstream: echoHandler, TokenServer: ts})
	ref := mustRef(t, p.Host()+"/team/app:1")
	url := p.URL() + "/v2/team/app/blobs/uploads/"
	e := newUserEnv(t)

	m := newManager(t, e.options())
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader("payload")) // sets GetBody
	resp, err := m.Transport(ref, []string{"pull,push"}, nil).RoundTrip(req)
	if err != nil {
		t.Fatal(noteErr(err))
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != "payload" {
		t.Errorf("replayable POST: %d %q, want 200 %q", resp.StatusCode, body, "payload")
	}

	m2 := newManager(t, e.options())
	req, _ = http.NewRequest(http.MethodPost, url, io.NopCloser(strings.NewReader("payload")))
	req.GetBody = nil
	resp, err = m2.Transport(ref, []string{"push", "pull"}, nil).RoundTrip(req)
	if err != nil {
		t.Fatal(noteErr(err))
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || m2.Stats().Retries != 0 {
		t.Errorf("one-shot body: status %d, retries %d; want the 401 and no retry", resp.StatusCode, m2.Stats().Retries)
	}
}

func TestClosedManager(t *testing.T) {
	r := newRegistry(t, registryConfig{})
	r.ts.SetAnonymousAccess("team/app", "pull")
	m := r.client(t, false, "", "")
	tr := m.Transport(r.ref(t, "team/app"), nil, nil)
	r.mustGet(t, tr, "team/app")
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := get(context.Background(), tr, r.blobURL("team/app"), ""); !errors.Is(err, ErrClosed) {
		t.Errorf("after Close: err = %v, want ErrClosed", err)
	}
	if err := tr.EnsureFresh(context.Background(), 0); !errors.Is(noteErr(err), ErrClosed) {
		t.Errorf("EnsureFresh after Close: err = %v, want ErrClosed", err)
	}
}

// TestRealShortTokens: real 1 s tokens, requests every 20 ms for 3.5 s: no
// request reaches the registry with an expired token.
func TestRealShortTokens(t *testing.T) {
	r := newRegistry(t, registryConfig{lifetime: time.Second})
	pw := secret("alice", "s3cr3t-short")
	r.ts.AddUser("alice", pw, map[string][]string{"team/app": {"pull"}})
	m := r.client(t, false, "alice", pw)
	tr := m.Transport(r.ref(t, "team/app"), nil, nil)
	for end := time.Now().Add(3500 * time.Millisecond); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		r.mustGet(t, tr, "team/app")
	}
	if got := r.proxy.Stats().ExpiredTokens; got != 0 {
		t.Errorf("requests with expired tokens = %d, want 0", got)
	}
	// A 1 s token is used for 0.5 s: about 7 tokens in 3.5 s.
	if got := r.ts.Stats().Issued; got < 5 || got > 10 {
		t.Errorf("tokens issued = %d, want about 7", got)
	}
}

// TestPlainHTTPRealmRefused: credentials for a registry reached over https
// are not sent to a token realm over plain http (anonymous access still
// works there).
func TestPlainHTTPRealmRefused(t *testing.T) {
	ts := authtest.NewTokenServer(t, authtest.TokenServerConfig{}) // plain http
	pw := secret("alice", "s3cr3t-downgrade")
	ts.AddUser("alice", pw, map[string][]string{"team/app": {"pull"}})
	ts.SetAnonymousAccess("public/app", "pull")
	reg := authtest.NewBlobRegistry()
	d := reg.Put("team/app", []byte("data"))
	reg.Put("public/app", []byte("data"))
	p := authtest.NewAuthProxy(t, authtest.ProxyConfig{Upstream: reg, TokenServer: ts, TLS: true})
	e := newUserEnv(t)
	writeFile(t, filepath.Join(e.configHome, "containers", "auth.json"), authJSON(map[string]authEntry{p.Host(): {"alice", pw, ""}}, nil))
	o := e.options()
	o.HTTPTransport = p.Client().Transport
	m := newManager(t, o)
	ctx := context.Background()
	_, _, err := get(ctx, m.Transport(mustRef(t, p.Host()+"/team/app:1"), nil, nil), p.URL()+"/v2/team/app/blobs/"+d.String(), "")
	if !errors.Is(err, ErrBadChallenge) {
		t.Errorf("credentials to a plain http realm: err = %v, want ErrBadChallenge", err)
	}
	if got := ts.Stats().GETs; got != 0 {
		t.Errorf("token requests = %d, want 0", got)
	}
}

// TestReauthenticate: a token obtained with credentials that are gone since
// (podman logout) is still used until its refresh margin; after
// Reauthenticate the next request proves access with the credentials as they
// are now and is refused.
func TestReauthenticate(t *testing.T) {
	pw := secret("alice", "s3cr3t-reauth")
	r := newRegistry(t, registryConfig{lifetime: time.Minute})
	r.ts.AddUser("alice", pw, map[string][]string{"team/app": {"pull"}})
	e := newUserEnv(t)
	authFile := filepath.Join(e.configHome, "containers", "auth.json")
	writeFile(t, authFile, authJSON(map[string]authEntry{r.proxy.Host(): {"alice", pw, ""}}, nil))
	m := newManager(t, e.options())
	tr := m.Transport(r.ref(t, "team/app"), []string{"pull"}, nil)
	tr.Reauthenticate() // nothing known about the host yet: nothing to drop

	r.mustGet(t, tr, "team/app")
	writeFile(t, authFile, authJSON(nil, nil))
	r.mustGet(t, tr, "team/app")
	if got := r.ts.Stats().Issued; got != 1 {
		t.Errorf("tokens issued before Reauthenticate = %d, want 1 (the cached one is used)", got)
	}
	tr.Reauthenticate()
	status, _, err := get(context.Background(), tr, r.blobURL("team/app"), "bytes=0-1")
	if !errors.Is(err, ErrUnauthorized) {
		t.Errorf("GET after logout and Reauthenticate: status %d, err %v; want %v", status, err, ErrUnauthorized)
	}
	if got := r.proxy.Stats().Denied; got == 0 {
		t.Errorf("registry refusals for insufficient scope = %d, want > 0 (anonymous token)", got)
	}
}
