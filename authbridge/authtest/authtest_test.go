package authtest

import (
	"bytes"
	"encoding/json"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

// fetchToken gets a token from ts with GET (Basic auth when user != "").
func fetchToken(t *testing.T, ts *TokenServer, user, pass, scope string) (map[string]any, int) {
	t.Helper()
	u := ts.Realm() + "?" + url.Values{"service": {ts.Service()}, "scope": {scope}}.Encode()
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	if user != "" {
		req.SetBasicAuth(user, pass)
	}
	resp, err := ts.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var answer map[string]any
	if resp.StatusCode == http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(&answer); err != nil {
			t.Fatal(err)
		}
	}
	return answer, resp.StatusCode
}

func get(t *testing.T, c *http.Client, u, token, rangeHdr string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if rangeHdr != "" {
		req.Header.Set("Range", rangeHdr)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

func TestTokenServerGrants(t *testing.T) {
	ts := NewTokenServer(t, TokenServerConfig{Lifetime: 5 * time.Second})
	ts.AddUser("alice", "alice-pw", map[string][]string{"team/a": {"pull", "push"}})
	ts.SetAnonymousAccess("public/img", "pull")
	tests := []struct {
		name       string
		user, pass string
		scope      string
		wantStatus int
		wantAccess []string // granted actions on the scope's repository
	}{
		{"user allowed", "alice", "alice-pw", "repository:team/a:pull", 200, []string{"pull"}},
		{"user subset", "alice", "alice-pw", "repository:team/a:pull,delete", 200, []string{"pull"}},
		{"user other repo", "alice", "alice-pw", "repository:team/b:pull", 200, nil},
		{"wrong password", "alice", "nope", "repository:team/a:pull", 401, nil},
		{"anonymous public", "", "", "repository:public/img:pull", 200, []string{"pull"}},
		{"anonymous private", "", "", "repository:team/a:pull", 200, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			answer, status := fetchToken(t, ts, tc.user, tc.pass, tc.scope)
			if status != tc.wantStatus {
				t.Fatalf("status = %d, want %d", status, tc.wantStatus)
			}
			if status != 200 {
				return
			}
			tok, _ := answer["token"].(string)
			c, err := VerifyToken(ts.Key(), tok)
			if err != nil {
				t.Fatalf("VerifyToken: %v", err)
			}
			repo := strings.Split(tc.scope, ":")[1]
			for _, a := range []string{"pull", "push", "delete"} {
				want := false
				for _, w := range tc.wantAccess {
					want = want || w == a
				}
				if got := c.Allows(repo, a); got != want {
					t.Errorf("Allows(%q, %q) = %v, want %v", repo, a, got, want)
				}
			}
			if got := answer["expires_in"]; got != float64(5) {
				t.Errorf("expires_in = %v, want 5", got)
			}
		})
	}
	if got := ts.Stats().Rejected; got != 1 {
		t.Errorf("Stats().Rejected = %d, want 1", got)
	}
}

func TestTokenServerPOST(t *testing.T) {
	ts := NewTokenServer(t, TokenServerConfig{})
	ts.AddUser("bob", "bob-pw", map[string][]string{"*": {"pull"}})
	ts.AddIdentityToken("bob", "bob-identity")
	post := func(form url.Values) (int, map[string]any) {
		resp, err := http.PostForm(ts.Realm(), form)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var a map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&a)
		return resp.StatusCode, a
	}
	base := url.Values{"client_id": {"test"}, "service": {ts.Service()}, "scope": {"repository:x/y:pull"}}
	with := func(kv ...string) url.Values {
		f := url.Values{}
		for k, v := range base {
			f[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			f.Set(kv[i], kv[i+1])
		}
		return f
	}
	tests := []struct {
		name       string
		form       url.Values
		wantStatus int
	}{
		{"refresh_token grant", with("grant_type", "refresh_token", "refresh_token", "bob-identity"), 200},
		{"bad refresh token", with("grant_type", "refresh_token", "refresh_token", "other"), 401},
		{"password grant", with("grant_type", "password", "username", "bob", "password", "bob-pw"), 200},
		{"no client_id", with("grant_type", "password", "username", "bob", "password", "bob-pw", "client_id", ""), 400},
	}
	for _, tc := range tests {
		status, a := post(tc.form)
		if status != tc.wantStatus {
			t.Errorf("%s: status = %d, want %d", tc.name, status, tc.wantStatus)
		}
		if status == 200 {
			if c, err := VerifyToken(ts.Key(), a["access_token"].(string)); err != nil || !c.Allows("x/y", "pull") {
				t.Errorf("%s: token claims %+v, %v; want pull on x/y", tc.name, c, err)
			}
		}
	}
	ts.SetPOSTSupported(false)
	if status, _ := post(with("grant_type", "refresh_token", "refresh_token", "bob-identity")); status != http.StatusMethodNotAllowed {
		t.Errorf("POST while unsupported: status = %d, want 405", status)
	}
	if got := ts.Stats().POSTUnsupported; got != 1 {
		t.Errorf("POSTUnsupported = %d, want 1", got)
	}
	// The identity token also works as Basic password on GET.
	if _, status := fetchToken(t, ts, "<token>", "bob-identity", "repository:x/y:pull"); status != 200 {
		t.Errorf("GET with identity token: status = %d, want 200", status)
	}
}

func TestTokenServerTimeFields(t *testing.T) {
	clock := NewClock(time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC))
	ts := NewTokenServer(t, TokenServerConfig{Lifetime: 3 * time.Second, Now: clock.Now})
	ts.SetOmitExpiresIn(true)
	ts.SetIssuedAtOffset(-time.Second)
	a, _ := fetchToken(t, ts, "", "", "repository:a:pull")
	if _, ok := a["expires_in"]; ok {
		t.Errorf("expires_in present while omitted: %v", a)
	}
	if got, want := a["issued_at"], "2025-01-02T03:04:04Z"; got != want {
		t.Errorf("issued_at = %v, want %v", got, want)
	}
	c, err := VerifyToken(ts.Key(), a["token"].(string))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := time.Unix(0, c.Expiry).UTC(), clock.Now().Add(2*time.Second); !got.Equal(want) {
		t.Errorf("token expiry = %v, want %v", got, want)
	}
	ts.SetOmitIssuedAt(true)
	if a, _ := fetchToken(t, ts, "", "", "repository:a:pull"); a["issued_at"] != nil {
		t.Errorf("issued_at present while omitted: %v", a)
	}
}

func TestAuthProxyBearer(t *testing.T) {
	clock := NewClock(time.Now())
	ts := NewTokenServer(t, TokenServerConfig{Lifetime: 10 * time.Second, Now: clock.Now})
	ts.AddUser("alice", "pw", map[string][]string{"team/a": {"pull"}})
	reg := NewBlobRegistry()
	blob := bytes.Repeat([]byte("0123456789"), 1000)
	dA := reg.Put("team/a", blob)
	reg.Put("team/b", blob)
	p := NewAuthProxy(t, ProxyConfig{Upstream: reg, TokenServer: ts, Now: clock.Now})
	blobURL := func(repo string) string { return p.URL() + "/v2/" + repo + "/blobs/" + dA.String() }

	resp := get(t, http.DefaultClient, blobURL("team/a"), "", "")
	if resp.StatusCode != 401 {
		t.Fatalf("no token: status %d, want 401", resp.StatusCode)
	}
	wantChallenge := `Bearer realm="` + ts.Realm() + `",service="` + ts.Service() + `",scope="repository:team/a:pull"`
	if got := resp.Header.Get("WWW-Authenticate"); got != wantChallenge {
		t.Errorf("challenge = %q, want %q", got, wantChallenge)
	}

	a, _ := fetchToken(t, ts, "alice", "pw", "repository:team/a:pull repository:team/b:pull")
	tok := a["token"].(string)

	resp = get(t, http.DefaultClient, blobURL("team/a"), tok, "bytes=10-19")
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusPartialContent || string(body) != "0123456789" {
		t.Errorf("ranged GET: %d %q, want 206 %q", resp.StatusCode, body, "0123456789")
	}

	resp = get(t, http.DefaultClient, blobURL("team/a"), tok, "bytes=0-1,20-22")
	mt, params, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if resp.StatusCode != http.StatusPartialContent || mt != "multipart/byteranges" {
		t.Fatalf("multi-range GET: %d %s, want 206 multipart/byteranges", resp.StatusCode, mt)
	}
	mr := multipart.NewReader(resp.Body, params["boundary"])
	var parts []string
	for {
		part, err := mr.NextPart()
		if err != nil {
			break
		}
		b, _ := io.ReadAll(part)
		parts = append(parts, string(b))
	}
	if strings.Join(parts, "|") != "01|012" {
		t.Errorf("multipart parts = %q, want [01 012]", parts)
	}

	resp = get(t, http.DefaultClient, blobURL("team/b"), tok, "")
	if resp.StatusCode != 401 || !strings.Contains(resp.Header.Get("WWW-Authenticate"), `error="insufficient_scope"`) {
		t.Errorf("other repo: %d %q, want 401 insufficient_scope", resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
	}

	resp = get(t, http.DefaultClient, blobURL("team/a"), tok+"x", "")
	if resp.StatusCode != 401 {
		t.Errorf("bad signature: status %d, want 401", resp.StatusCode)
	}

	clock.Advance(10 * time.Second)
	resp = get(t, http.DefaultClient, blobURL("team/a"), tok, "")
	if resp.StatusCode != 401 || !strings.Contains(resp.Header.Get("WWW-Authenticate"), `error="invalid_token"`) {
		t.Errorf("expired token: %d %q, want 401 invalid_token", resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
	}

	got := p.Stats()
	want := ProxyStats{Requests: 6, Authorized: 2, Unauthorized: 4, NoAuth: 1, ExpiredTokens: 1, InvalidTokens: 1, Denied: 1}
	if got != want {
		t.Errorf("Stats() = %+v, want %+v", got, want)
	}
}

func TestAuthProxyExpiryStyles(t *testing.T) {
	tests := []struct {
		style      ExpiryStyle
		wantStatus int
		wantBody   string
	}{
		{ExpiryUnauthorized, 401, "token expired"},
		{ExpiryECR, 403, "has expired"},
		{ExpiryS3, 400, "<Code>ExpiredToken</Code>"},
	}
	for _, tc := range tests {
		clock := NewClock(time.Now())
		ts := NewTokenServer(t, TokenServerConfig{Lifetime: time.Second, Now: clock.Now})
		ts.SetAnonymousAccess("a", "pull")
		reg := NewBlobRegistry()
		d := reg.Put("a", []byte("data"))
		p := NewAuthProxy(t, ProxyConfig{Upstream: reg, TokenServer: ts, Expiry: tc.style, Now: clock.Now})
		a, _ := fetchToken(t, ts, "", "", "repository:a:pull")
		clock.Advance(time.Second)
		resp := get(t, http.DefaultClient, p.URL()+"/v2/a/blobs/"+d.String(), a["token"].(string), "")
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != tc.wantStatus || !strings.Contains(string(body), tc.wantBody) {
			t.Errorf("style %d: %d %q, want %d containing %q", tc.style, resp.StatusCode, body, tc.wantStatus, tc.wantBody)
		}
		if got := p.Stats().ExpiredTokens; got != 1 {
			t.Errorf("style %d: ExpiredTokens = %d, want 1", tc.style, got)
		}
	}
}

func TestAuthProxyBasic(t *testing.T) {
	reg := NewBlobRegistry()
	d := reg.Put("a", []byte("data"))
	p := NewAuthProxy(t, ProxyConfig{Upstream: reg, Mode: BasicMode, Users: map[string]string{"u": "pw"}})
	tests := []struct {
		user, pass string
		want       int
	}{{"u", "pw", 200}, {"u", "bad", 401}, {"", "", 401}}
	for _, tc := range tests {
		req, _ := http.NewRequest(http.MethodGet, p.URL()+"/v2/a/blobs/"+d.String(), nil)
		if tc.user != "" {
			req.SetBasicAuth(tc.user, tc.pass)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("Basic %q/%q: status %d, want %d", tc.user, tc.pass, resp.StatusCode, tc.want)
		}
		if tc.want == 401 && resp.Header.Get("WWW-Authenticate") != `Basic realm="authtest"` {
			t.Errorf("challenge = %q, want Basic", resp.Header.Get("WWW-Authenticate"))
		}
	}
	if got := p.Stats(); got.BadBasic != 1 || got.NoAuth != 1 {
		t.Errorf("Stats() = %+v, want BadBasic 1 NoAuth 1", got)
	}
}

func TestAuthProxyRedirect(t *testing.T) {
	clock := NewClock(time.Now())
	ts := NewTokenServer(t, TokenServerConfig{Lifetime: time.Hour, Now: clock.Now})
	ts.SetAnonymousAccess("a", "pull")
	reg := NewBlobRegistry()
	d := reg.Put("a", []byte("0123456789"))
	p := NewAuthProxy(t, ProxyConfig{Upstream: reg, TokenServer: ts, RedirectBlobs: true, StorageURLLifetime: time.Minute, Now: clock.Now})
	a, _ := fetchToken(t, ts, "", "", "repository:a:pull")
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp := get(t, noFollow, p.URL()+"/v2/a/blobs/"+d.String(), a["token"].(string), "bytes=2-4")
	loc, err := resp.Location()
	if resp.StatusCode != http.StatusTemporaryRedirect || err != nil || !strings.HasPrefix(loc.String(), p.StorageURL()) {
		t.Fatalf("blob GET: %d %v %v, want 307 to %s", resp.StatusCode, loc, err, p.StorageURL())
	}

	resp = get(t, http.DefaultClient, loc.String(), "", "bytes=2-4")
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusPartialContent || string(body) != "234" {
		t.Errorf("storage GET: %d %q, want 206 %q", resp.StatusCode, body, "234")
	}
	resp = get(t, http.DefaultClient, loc.String(), a["token"].(string), "")
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("storage GET with Authorization: status %d, want 400", resp.StatusCode)
	}
	clock.Advance(time.Minute)
	resp = get(t, http.DefaultClient, loc.String(), "", "")
	body, _ = io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "ExpiredToken") {
		t.Errorf("expired storage URL: %d %q, want 400 ExpiredToken", resp.StatusCode, body)
	}
	got := p.Stats()
	if got.Redirects != 1 || got.StorageRequests != 3 || got.StorageAuthViolations != 1 || got.StorageExpired != 1 {
		t.Errorf("Stats() = %+v, want Redirects 1, StorageRequests 3, StorageAuthViolations 1, StorageExpired 1", got)
	}
}
