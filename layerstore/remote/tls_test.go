package remote

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containers/image/v5/docker/reference"

	"github.com/lazypull/lazypull/tests/testenv"
)

// tlsBlobServer serves content like newBlobServer over TLS with cfg.
func tlsBlobServer(t *testing.T, content []byte, cfg *tls.Config) *blobServer {
	t.Helper()
	return tlsBlobServerProto(t, content, cfg, false)
}

// tlsBlobServerProto is tlsBlobServer, offering HTTP/2 when h2 is set (as
// registries do).
func tlsBlobServerProto(t *testing.T, content []byte, cfg *tls.Config, h2 bool) *blobServer {
	t.Helper()
	bs := newBlobServer(t, content, false) // for its handler
	bs.Close()
	srv := httptest.NewUnstartedServer(bs.Config.Handler)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are what some tests want
	srv.TLS = cfg
	srv.EnableHTTP2 = h2
	srv.StartTLS()
	t.Cleanup(srv.Close)
	bs.Server = srv
	return bs
}

// TestCertsDir: a registry whose certificate comes from a private CA is
// trusted when the CA is in <certs dir>/<host:port>/*.crt, as podman's
// certs.d; without it the error names the directory to put it in. A
// registry that wants client certificates gets the *.cert/*.key pair.
func TestCertsDir(t *testing.T) {
	ca := testenv.NewTestCA(t, "certs-dir-test")
	content := testContent(5000)
	for _, clientAuth := range []bool{false, true} {
		cfg, err := ca.ServerConfig(clientAuth, "127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		srv := tlsBlobServer(t, content, cfg)
		read := func(certsDir string) error {
			c, err := NewClient(Options{CertsDir: certsDir})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			got, err := newBlob(t, c, srv.host()+"/ns/app", content).ReadRanges(context.Background(), []Range{{100, 200}})
			if err == nil {
				checkRanges(t, content, []Range{{100, 200}}, got)
			}
			return err
		}
		empty := t.TempDir()
		err = read(empty)
		var unknownCA x509.UnknownAuthorityError
		if !errors.As(err, &unknownCA) || !strings.Contains(err.Error(), filepath.Join(empty, srv.host())) ||
			!strings.Contains(err.Error(), "containers-certs.d") {
			t.Errorf("clientAuth=%v: read without the CA: %v; want an unknown-authority error naming %s", clientAuth, err, filepath.Join(empty, srv.host()))
		}
		withCA := t.TempDir()
		if _, err := ca.WriteCertsD(withCA, srv.host(), testenv.CertsDirOptions{CA: true}); err != nil {
			t.Fatal(err)
		}
		err = read(withCA)
		switch {
		case !clientAuth && err != nil:
			t.Errorf("read with the CA in the certs dir: %v", err)
		case clientAuth && (err == nil || !strings.Contains(err.Error(), "client certificate")):
			t.Errorf("read without a client certificate: %v, want an error saying a client certificate is wanted", err)
		case clientAuth && strings.Contains(err.Error(), "giving up after"):
			t.Errorf("read without a client certificate was retried: %v", err)
		}
		if clientAuth {
			both := t.TempDir()
			if _, err := ca.WriteCertsD(both, srv.host(), testenv.CertsDirOptions{CA: true, Client: true}); err != nil {
				t.Fatal(err)
			}
			if err := read(both); err != nil {
				t.Errorf("read with the CA and a client certificate: %v", err)
			}
		}
	}
}

// TestClientCertificateWantedOverHTTP2: over HTTP/2 a registry's "I want a
// client certificate" alert races net/http's own "client conn could not be
// established", which hides it; every read must still say that a client
// certificate is wanted. Repeated because it is a race (before the HTTP/1.1
// replay, about 1 in 20 reads here lost the reason).
func TestClientCertificateWantedOverHTTP2(t *testing.T) {
	ca := testenv.NewTestCA(t, "client-cert-h2-test")
	content := testContent(5000)
	cfg, err := ca.ServerConfig(true, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	srv := tlsBlobServerProto(t, content, cfg, true)
	withCA := t.TempDir()
	if _, err := ca.WriteCertsD(withCA, srv.host(), testenv.CertsDirOptions{CA: true}); err != nil {
		t.Fatal(err)
	}
	const reads = 100
	lost := 0
	for i := 0; i < reads; i++ {
		c, err := NewClient(Options{CertsDir: withCA})
		if err != nil {
			t.Fatal(err)
		}
		_, err = newBlob(t, c, srv.host()+"/ns/app", content).ReadRanges(context.Background(), []Range{{100, 200}})
		c.Close()
		if err == nil || !strings.Contains(err.Error(), "client certificate") {
			lost++
			t.Logf("read %d without a client certificate: %v", i, err)
		}
	}
	if lost > 0 {
		t.Errorf("%d of %d reads without a client certificate did not say one is wanted", lost, reads)
	}
	both := t.TempDir()
	if _, err := ca.WriteCertsD(both, srv.host(), testenv.CertsDirOptions{CA: true, Client: true}); err != nil {
		t.Fatal(err)
	}
	c, err := NewClient(Options{CertsDir: both})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got, err := newBlob(t, c, srv.host()+"/ns/app", content).ReadRanges(context.Background(), []Range{{100, 200}})
	if err != nil {
		t.Fatalf("read over HTTP/2 with a client certificate: %v", err)
	}
	checkRanges(t, content, []Range{{100, 200}}, got)
}

// TestRedirectKeepsOtherHostsVerified: an insecure registry's redirect to
// another host does not make that host insecure — neither for the redirect
// (the read fails on its certificate) nor later (issue 10); a redirect from
// https to plain http is refused.
func TestRedirectKeepsOtherHostsVerified(t *testing.T) {
	content := testContent(4000)
	storage := newBlobServer(t, content, true) // self-signed: not trusted
	plainStorage := newBlobServer(t, content, false)
	target := storage.URL
	reg := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			return
		}
		http.Redirect(w, r, target+r.URL.Path, http.StatusTemporaryRedirect)
	}))
	reg.Config.ErrorLog = log.New(io.Discard, "", 0)
	reg.StartTLS()
	defer reg.Close()
	regHost := strings.TrimPrefix(reg.URL, "https://")
	c, err := NewClient(Options{InsecureRegistries: []string{regHost}, BackoffBase: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b := newBlob(t, c, regHost+"/ns/app", content)
	_, err = b.ReadRanges(context.Background(), []Range{{0, 10}})
	if !errors.As(err, new(x509.UnknownAuthorityError)) || !strings.Contains(err.Error(), storage.host()) {
		t.Fatalf("read redirected from an insecure registry to a host with an untrusted certificate: %v, want its certificate refused", err)
	}
	// The storage host, reached directly as a registry, is still verified.
	_, err = newBlob(t, c, storage.host()+"/ns/app", content).ReadRanges(context.Background(), []Range{{0, 10}})
	if !errors.As(err, new(x509.UnknownAuthorityError)) {
		t.Errorf("later direct read from the redirect target: %v, want its certificate refused", err)
	}
	// https -> http.
	target = plainStorage.URL
	c2, err := NewClient(Options{InsecureRegistries: []string{regHost}, BackoffBase: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	_, err = newBlob(t, c2, regHost+"/ns/app", content).ReadRanges(context.Background(), []Range{{0, 10}})
	if !errors.Is(err, ErrInsecureRedirect) {
		t.Errorf("redirect from https to plain http: %v, want ErrInsecureRedirect", err)
	}
	if n := len(plainStorage.requests()); n != 0 {
		t.Errorf("the plain http target got %d requests, want 0", n)
	}
}

// TestProxyTunnelsCredentials: through an HTTP proxy, https registries are
// reached in a CONNECT tunnel: the proxy sees the target host, never the
// Authorization header.
func TestProxyTunnelsCredentials(t *testing.T) {
	ca := testenv.NewTestCA(t, "proxy-test")
	cfg, err := ca.ServerConfig(false, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	content := testContent(300_000)
	const authorization = "Basic bGF6eXB1bGw6cHJveHktdGVzdC1zZWNyZXQ=" // lazypull:proxy-test-secret
	srv := tlsBlobServer(t, content, cfg)
	inner := srv.Config.Handler
	srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v2/" && r.Header.Get("Authorization") != authorization {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		inner.ServeHTTP(w, r)
	})
	certs := t.TempDir()
	if _, err := ca.WriteCertsD(certs, srv.host(), testenv.CertsDirOptions{CA: true}); err != nil {
		t.Fatal(err)
	}
	proxy := testenv.StartConnectProxy(t)
	proxyURL, _ := url.Parse(proxy.URL)
	c, err := NewClient(Options{CertsDir: certs, Proxy: http.ProxyURL(proxyURL),
		Auth: func(_ reference.Named, _ []string, base http.RoundTripper) (Auth, error) {
			return StaticAuth(base, srv.host(), authorization), nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ranges := []Range{{0, 100}, {200_000, 50_000}}
	got, err := newBlob(t, c, srv.host()+"/ns/app", content).ReadRanges(context.Background(), ranges)
	if err != nil {
		t.Fatalf("read through the proxy: %v", err)
	}
	checkRanges(t, content, ranges, got)
	if n := proxy.Tunnels()[srv.host()]; n == 0 {
		t.Errorf("no CONNECT tunnel to %s (tunnels %v)", srv.host(), proxy.Tunnels())
	}
	if proxy.Saw("proxy-test-secret") || proxy.Saw("bGF6eXB1bGw6cHJveHktdGVzdC1zZWNyZXQ=") {
		t.Error("the proxy saw the credentials in clear")
	}
}

// TestCertsDirInHome: without Options.CertsDir the client looks where
// podman does, $HOME/.config/containers/certs.d/<host:port> first (rootless
// podman's place).
func TestCertsDirInHome(t *testing.T) {
	ca := testenv.NewTestCA(t, "home-certs-test")
	cfg, err := ca.ServerConfig(false, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	content := testContent(3000)
	srv := tlsBlobServer(t, content, cfg)
	home := t.TempDir()
	t.Setenv("HOME", home)
	if _, err := ca.WriteCertsD(filepath.Join(home, ".config", "containers", "certs.d"), srv.host(), testenv.CertsDirOptions{CA: true}); err != nil {
		t.Fatal(err)
	}
	c, err := NewClient(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got, err := newBlob(t, c, srv.host()+"/ns/app", content).ReadRanges(context.Background(), []Range{{10, 100}})
	if err != nil {
		t.Fatalf("read with the CA in $HOME/.config/containers/certs.d: %v", err)
	}
	checkRanges(t, content, []Range{{10, 100}}, got)
}
