package authbridge

import (
	"encoding/json"
	"errors"
	"math"
	"net/http"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseChallenges(t *testing.T) {
	tests := []struct {
		name   string
		values []string
		want   []Challenge
	}{
		{
			name:   "distribution bearer",
			values: []string{`Bearer realm="https://auth.example/token",service="registry.example",scope="repository:ns/img:pull"`},
			want: []Challenge{{Scheme: "bearer", Params: map[string]string{
				"realm": "https://auth.example/token", "service": "registry.example", "scope": "repository:ns/img:pull"}}},
		},
		{
			name:   "spaces, case, escapes, error param",
			values: []string{`BEARER  Realm = "https://a.example/t" , service="s\"q" ,error="invalid_token"`},
			want: []Challenge{{Scheme: "bearer", Params: map[string]string{
				"realm": "https://a.example/t", "service": `s"q`, "error": "invalid_token"}}},
		},
		{
			name:   "two challenges in one header",
			values: []string{`Basic realm="r", Bearer realm="https://a.example/t",service=x`},
			want: []Challenge{
				{Scheme: "basic", Params: map[string]string{"realm": "r"}},
				{Scheme: "bearer", Params: map[string]string{"realm": "https://a.example/t", "service": "x"}},
			},
		},
		{
			name:   "two headers",
			values: []string{`Basic realm="registry"`, `Bearer realm="https://a.example/t"`},
			want: []Challenge{
				{Scheme: "basic", Params: map[string]string{"realm": "registry"}},
				{Scheme: "bearer", Params: map[string]string{"realm": "https://a.example/t"}},
			},
		},
		{name: "scheme only", values: []string{`Negotiate`}, want: []Challenge{{Scheme: "negotiate", Params: map[string]string{}}}},
		{name: "garbage", values: []string{`"quoted"`}, want: nil},
		{name: "none", values: nil, want: nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{}
			for _, v := range tc.values {
				h.Add("WWW-Authenticate", v)
			}
			if got := ParseChallenges(h); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("ParseChallenges(%q) = %#v, want %#v", tc.values, got, tc.want)
			}
		})
	}
}

func TestPickChallenge(t *testing.T) {
	tests := []struct {
		header  string
		want    authScheme
		wantErr error
	}{
		{`Basic realm="x", Bearer realm="https://a.example/t",service="s"`, schemeBearer, nil},
		{`Basic realm="x"`, schemeBasic, nil},
		{`Bearer realm="/relative"`, schemeUnknown, ErrBadChallenge},
		{`Bearer service="s"`, schemeUnknown, ErrBadChallenge},
		{`Bearer realm="ftp://a.example/t"`, schemeUnknown, ErrBadChallenge},
		{`Negotiate`, schemeUnknown, ErrBadChallenge},
		{``, schemeUnknown, ErrBadChallenge},
	}
	for _, tc := range tests {
		h := http.Header{}
		if tc.header != "" {
			h.Set("WWW-Authenticate", tc.header)
		}
		got, err := pickChallenge(ParseChallenges(h))
		if got.scheme != tc.want || !errors.Is(err, tc.wantErr) {
			t.Errorf("pickChallenge(%q) = %v, %v; want %v, %v", tc.header, got.scheme, err, tc.want, tc.wantErr)
		}
	}
}

func TestRefreshMargin(t *testing.T) {
	tests := []struct {
		lifetime, want time.Duration
	}{
		{5 * time.Minute, time.Minute},       // 20 %
		{time.Hour, 12 * time.Minute},        // 20 %
		{60 * time.Second, 12 * time.Second}, // 20 %
		{50 * time.Second, 10 * time.Second}, // 20 % = minimum
		{30 * time.Second, 10 * time.Second}, // minimum
		{20 * time.Second, 10 * time.Second}, // minimum = half
		{4 * time.Second, 2 * time.Second},   // capped at half the lifetime
		{2 * time.Second, time.Second},       // capped at half the lifetime
	}
	for _, tc := range tests {
		if got := RefreshMargin(tc.lifetime); got != tc.want {
			t.Errorf("RefreshMargin(%v) = %v, want %v", tc.lifetime, got, tc.want)
		}
	}
}

func TestTokenValidity(t *testing.T) {
	receipt := time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name         string
		answer       tokenAnswer
		wantIssued   time.Time
		wantLifetime time.Duration
	}{
		{"expires_in absent: 60 s", tokenAnswer{Token: "t"}, receipt, 60 * time.Second},
		{"expires_in zero: 60 s", tokenAnswer{Token: "t", ExpiresIn: 0}, receipt, 60 * time.Second},
		{"expires_in honoured, also below 60 s", tokenAnswer{Token: "t", ExpiresIn: 3}, receipt, 3 * time.Second},
		{"issued_at in the past honoured", tokenAnswer{Token: "t", ExpiresIn: 60, IssuedAt: "2030-01-01T11:59:30Z"}, receipt.Add(-30 * time.Second), 60 * time.Second},
		{"issued_at with fraction", tokenAnswer{Token: "t", ExpiresIn: 60, IssuedAt: "2030-01-01T11:59:59.5Z"}, receipt.Add(-500 * time.Millisecond), 60 * time.Second},
		{"issued_at in the future clamped", tokenAnswer{Token: "t", ExpiresIn: 60, IssuedAt: "2030-01-01T12:05:00Z"}, receipt, 60 * time.Second},
		{"issued_at malformed ignored", tokenAnswer{Token: "t", ExpiresIn: 60, IssuedAt: "yesterday"}, receipt, 60 * time.Second},
		{"issued_at an hour back: at most half the lifetime", tokenAnswer{Token: "t", ExpiresIn: 60, IssuedAt: "2030-01-01T11:00:00Z"}, receipt.Add(-30 * time.Second), 60 * time.Second},
		{"expires_in beyond a day capped", tokenAnswer{Token: "t", ExpiresIn: 400000}, receipt, MaxTokenLifetime},
		{"expires_in past time.Duration capped", tokenAnswer{Token: "t", ExpiresIn: math.MaxInt64}, receipt, MaxTokenLifetime},
		{"expires_in 1e300 capped", tokenAnswer{Token: "t", ExpiresIn: 1e300}, receipt, MaxTokenLifetime},
		{"expires_in fraction", tokenAnswer{Token: "t", ExpiresIn: 90.5}, receipt, 90*time.Second + 500*time.Millisecond},
		{"expires_in negative: 60 s", tokenAnswer{Token: "t", ExpiresIn: -5}, receipt, 60 * time.Second},
	}
	for _, tc := range tests {
		issued, expiry, lifetime := tc.answer.validity(receipt)
		if !issued.Equal(tc.wantIssued) || lifetime != tc.wantLifetime || !expiry.Equal(tc.wantIssued.Add(tc.wantLifetime)) {
			t.Errorf("%s: validity = %v, %v, %v; want issued %v, lifetime %v", tc.name, issued, expiry, lifetime, tc.wantIssued, tc.wantLifetime)
		}
	}
}

// TestExpiresInDecoding: expires_in of any JSON shape decodes without
// failing the exchange; what is not a positive number means absent.
func TestExpiresInDecoding(t *testing.T) {
	for _, tc := range []struct {
		raw  string
		want time.Duration
	}{
		{`300`, 300 * time.Second},
		{`300.25`, 300*time.Second + 250*time.Millisecond},
		{`3e2`, 300 * time.Second},
		{`"300"`, 300 * time.Second},
		{`9223372036854775807`, MaxTokenLifetime},
		{`92233720368547758070000`, MaxTokenLifetime},
		{`1e400`, DefaultExpiresIn}, // not a float64: absent
		{`-1`, DefaultExpiresIn},
		{`0`, DefaultExpiresIn},
		{`null`, DefaultExpiresIn},
		{`"soon"`, DefaultExpiresIn},
		{`{"a": 1}`, DefaultExpiresIn},
		{`[60]`, DefaultExpiresIn},
		{`true`, DefaultExpiresIn},
	} {
		var a tokenAnswer
		if err := json.Unmarshal([]byte(`{"token": "t", "expires_in": `+tc.raw+`}`), &a); err != nil {
			t.Errorf("expires_in %s: decoding fails: %v", tc.raw, err)
			continue
		}
		if _, _, got := a.validity(time.Now()); got != tc.want {
			t.Errorf("expires_in %s: lifetime %v, want %v", tc.raw, got, tc.want)
		}
	}
}

func TestTransportHostAndScope(t *testing.T) {
	m := newManager(t, Options{})
	tests := []struct {
		ref       string
		actions   []string
		wantHost  string
		wantScope string
	}{
		{"alpine", nil, "registry-1.docker.io", "repository:library/alpine:pull"},
		{"Registry.Example:5000/a/b:1", []string{"push", "pull"}, "registry.example:5000", "repository:a/b:pull,push"},
		{"quay.io/x/y@sha256:" + strings.Repeat("c", 64), []string{"pull,push", " pull "}, "quay.io", "repository:x/y:pull,push"},
	}
	for _, tc := range tests {
		tr := m.Transport(mustRef(t, tc.ref), tc.actions, nil)
		if tr.Host() != tc.wantHost || tr.scope != tc.wantScope {
			t.Errorf("Transport(%s, %q) = host %q scope %q, want %q %q", tc.ref, tc.actions, tr.Host(), tr.scope, tc.wantHost, tc.wantScope)
		}
		noteText(tr.String())
	}
	tr := m.Transport(mustRef(t, "registry.example/a"), nil, nil)
	for _, u := range []struct {
		url  string
		want bool
	}{
		{"https://registry.example/v2/", true},
		{"https://registry.example:443/v2/", true},
		{"http://REGISTRY.example:80/v2/", true},
		{"https://registry.example:8443/v2/", false},
		{"https://storage.example/blob", false},
		{"https://registry.example.evil/v2/", false},
	} {
		parsed, err := url.Parse(u.url)
		if err != nil {
			t.Fatal(err)
		}
		if got := tr.isRegistryHost(parsed); got != u.want {
			t.Errorf("isRegistryHost(%s) = %v, want %v", u.url, got, u.want)
		}
	}
}
