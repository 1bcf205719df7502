package testenv

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"
)

// getWith fetches url with client (and an optional Range).
func getWith(t *testing.T, client *http.Client, url, rng string) (int, []byte, error) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

// TestTLSRegistry: a docker-registry with a test CA's certificate answers
// clients that trust the CA only, and with ClientCerts only those that
// present a certificate of it.
func TestTLSRegistry(t *testing.T) {
	ca := NewTestCA(t, "tls-registry-test")
	for _, clientCerts := range []bool{false, true} {
		reg := StartRegistry(t, RegistryOptions{TLS: ca, ClientCerts: clientCerts})
		if !strings.HasPrefix(reg.URL, "https://") {
			t.Fatalf("URL = %q, want https://", reg.URL)
		}
		if status, _, err := getWith(t, reg.HTTPClient, reg.URL+"/v2/", ""); err != nil || status != http.StatusOK {
			t.Errorf("clientCerts=%v: GET /v2/ with the registry's client = %d, %v; want 200", clientCerts, status, err)
		}
		_, _, err := getWith(t, http.DefaultClient, reg.URL+"/v2/", "")
		if !errors.As(err, new(x509.UnknownAuthorityError)) {
			t.Errorf("clientCerts=%v: GET /v2/ with the system pool: %v, want an unknown-authority error", clientCerts, err)
		}
		if clientCerts {
			cfg, err := ca.ClientConfig(false)
			if err != nil {
				t.Fatal(err)
			}
			noCert := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}
			if status, _, err := getWith(t, noCert, reg.URL+"/v2/", ""); err == nil {
				t.Errorf("GET /v2/ without a client certificate = %d, want a TLS error", status)
			}
		}
	}
}

// TestRegistryUsers: a TLS registry with Users wants their Basic
// credentials; HTTPClient sends them.
func TestRegistryUsers(t *testing.T) {
	ca := NewTestCA(t, "users-test")
	reg := StartRegistry(t, RegistryOptions{TLS: ca, Users: map[string]string{"alice": "alice-secret"}})
	if status, _, err := getWith(t, reg.HTTPClient, reg.URL+"/v2/", ""); err != nil || status != http.StatusOK {
		t.Errorf("GET /v2/ with the registry's client = %d, %v; want 200", status, err)
	}
	cfg, err := ca.ClientConfig(false)
	if err != nil {
		t.Fatal(err)
	}
	anonymous := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}
	if status, _, err := getWith(t, anonymous, reg.URL+"/v2/", ""); err != nil || status != http.StatusUnauthorized {
		t.Errorf("GET /v2/ without credentials = %d, %v; want 401", status, err)
	}
}

// TestPullThroughRegistry shows how distribution 2.8's pull-through cache
// answers range requests, which the registry client's mirror handling relies
// on: a blob it has not stored is answered with 200 and the whole blob
// (streamed from upstream) even to a Range request; once stored in the
// background, ranges get 206; upstream never sees a range request.
func TestPullThroughRegistry(t *testing.T) {
	img := smallImage(t, "pull-through", nil)
	origin := StartRegistry(t, RegistryOptions{})
	upstream := StartCountingProxy(t, origin.URL)
	if _, err := Push(context.Background(), origin.URL, "app/small", "v1", img.Dir); err != nil {
		t.Fatal(err)
	}
	mirror := StartRegistry(t, RegistryOptions{ProxyRemoteURL: upstream.URL})
	l := img.Layers[0]
	blobURL := mirror.URL + "/v2/app/small/blobs/" + l.Digest.String()
	status, body, err := getWith(t, http.DefaultClient, blobURL, "bytes=100-199")
	if err != nil || status != http.StatusOK || int64(len(body)) != l.Size {
		t.Fatalf("cold mirror: GET with Range = %d, %d bytes, %v; want 200 and the whole %d-byte blob", status, len(body), err, l.Size)
	}
	want := body[100:200]
	deadline := time.Now().Add(20 * time.Second)
	for {
		status, part, err := getWith(t, http.DefaultClient, blobURL, "bytes=100-199")
		if err == nil && status == http.StatusPartialContent {
			if !bytes.Equal(part, want) {
				t.Errorf("warm mirror: range differs from the blob's bytes 100-199")
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("mirror still answers %d (%v) to a range request 20 s after the first request", status, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	s := upstream.Stats()
	if s.ByKind[KindRange].Requests != 0 || s.ByDigest[l.Digest.String()].Requests == 0 {
		t.Errorf("upstream saw %d range requests and %d requests for the blob, want 0 and some", s.ByKind[KindRange].Requests, s.ByDigest[l.Digest.String()].Requests)
	}
}

// TestConnectProxy: https requests pass through a CONNECT tunnel (the
// proxy never sees their headers in clear), plain http proxying is refused.
func TestConnectProxy(t *testing.T) {
	ca := NewTestCA(t, "connect-proxy-test")
	srvCfg, err := ca.ServerConfig(false, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	const secret = "Basic c2VjcmV0LXBhc3N3b3Jk"
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != secret {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		_, _ = io.WriteString(w, "hello")
	}))
	srv.TLS = srvCfg
	srv.StartTLS()
	defer srv.Close()
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer plain.Close()

	p := StartConnectProxy(t)
	proxyURL, _ := url.Parse(p.URL)
	clientCfg, err := ca.ClientConfig(false)
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(proxyURL), TLSClientConfig: clientCfg}}
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/x", nil)
	req.Header.Set("Authorization", secret)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET through the proxy: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != "hello" {
		t.Errorf("GET through the proxy = %d %q, want 200 hello", resp.StatusCode, body)
	}
	host := strings.TrimPrefix(srv.URL, "https://")
	if n := p.Tunnels()[host]; n != 1 {
		t.Errorf("tunnels to %s = %d, want 1 (all: %v)", host, n, p.Tunnels())
	}
	if p.Saw(secret) || p.Saw("c2VjcmV0") {
		t.Error("the proxy saw the Authorization header in clear")
	}
	if status, _, err := getWith(t, client, plain.URL+"/y", ""); err != nil || status != http.StatusMethodNotAllowed {
		t.Errorf("plain http through the proxy = %d, %v; want 405", status, err)
	}
	if n := p.Refused()[strings.TrimPrefix(plain.URL, "http://")]; n != 1 {
		t.Errorf("refused plain requests = %v, want 1 for %s", p.Refused(), plain.URL)
	}
}
