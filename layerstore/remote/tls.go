package remote

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containers/image/v5/pkg/tlsclientconfig"
)

// podmanCertDirs are the directories podman (containers/image) searches for
// <host[:port]>/ subdirectories, in order; the first that has one wins
// (containers-certs.d(5)). The home directory comes first, for rootless use.
func podmanCertDirs() []string {
	dirs := []string{}
	if home, err := os.UserHomeDir(); err == nil && home != "" {
		dirs = append(dirs, filepath.Join(home, ".config", "containers", "certs.d"))
	}
	return append(dirs, "/etc/containers/certs.d", "/etc/docker/certs.d")
}

// certDir returns the certs.d directory of host (host[:port] as in image
// references; "docker.io" for Docker Hub, as podman does), and the
// directories searched, for error messages.
func (c *Client) certDir(host string) (dir string, searched []string) {
	if c.opts.CertsDir != "" {
		d := filepath.Join(c.opts.CertsDir, host)
		return d, []string{c.opts.CertsDir}
	}
	roots := podmanCertDirs()
	for _, root := range roots {
		d := filepath.Join(root, host)
		if _, err := os.Stat(d); err == nil {
			return d, roots
		}
	}
	return "", roots
}

// certsName is the name of host in certs.d: podman looks Docker Hub up as
// docker.io, not as its API host.
func certsName(host string) string {
	if host == dockerHubAPIHost {
		return "docker.io"
	}
	return host
}

// transportKey identifies one of the client's transports: requests to
// target, made on behalf of the registry endpoint `endpoint` (they differ for
// token servers and redirect targets), with or without verification.
type transportKey struct {
	endpoint, target string
	skipVerify       bool
	http1            bool // HTTP/1.1 only: see retryHTTP1
}

// transport returns the (cached) transport for key.
//
// TLS follows podman: the system pool plus the *.crt files of the target's
// certs.d directory, and its *.cert/*.key client certificate. Requests to
// another host than the endpoint's (token servers, object storage after a
// redirect) also trust the endpoint's CAs, as podman does, but never get its
// client certificate, and never skip verification unless that host itself
// is configured insecure: an insecure registry does not make the hosts it
// points to insecure.
func (c *Client) transport(key transportKey) (*http.Transport, error) {
	c.mu.Lock()
	t, ok := c.transports[key]
	c.mu.Unlock()
	if ok {
		return t, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if key.endpoint != "" && key.endpoint != key.target {
		if dir, _ := c.certDir(certsName(key.endpoint)); dir != "" {
			scratch := &tls.Config{}
			if err := tlsclientconfig.SetupCertificates(dir, scratch); err != nil {
				return nil, fmt.Errorf("TLS settings of %s in %s: %w", key.endpoint, dir, err)
			}
			cfg.RootCAs = scratch.RootCAs // its CAs, not its client certificate
		}
	}
	if dir, _ := c.certDir(certsName(key.target)); dir != "" {
		if err := tlsclientconfig.SetupCertificates(dir, cfg); err != nil {
			return nil, fmt.Errorf("TLS settings of %s in %s: %w", key.target, dir, err)
		}
	}
	cfg.InsecureSkipVerify = key.skipVerify //nolint:gosec // only for registries the user marked insecure
	t = newTransport(c.opts)
	t.TLSClientConfig = cfg
	if key.http1 {
		t.ForceAttemptHTTP2 = false
		t.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{} // non-nil: no HTTP/2
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if prev, ok := c.transports[key]; ok {
		return prev, nil
	}
	c.transports[key] = t
	return t, nil
}

// newTransport returns a transport with the client's proxy and dialer and
// connection pooling. It has no response header timeout: reads are bounded
// by the request timeout or the first-byte and idle watchdogs instead, which
// differ between origins and mirrors.
func newTransport(o Options) *http.Transport {
	return &http.Transport{
		Proxy:                 o.Proxy,
		DialContext:           o.DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          256,
		MaxIdleConnsPerHost:   32,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   15 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
}

// defaultDialer is the dialer of Options.DialContext's default.
var defaultDialer = &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}

// endpointTransport is the base transport of one registry endpoint: requests
// to the endpoint's host use its TLS settings (insecure if it is), requests
// to other hosts their own.
type endpointTransport struct {
	c        *Client
	host     string
	insecure bool
}

func (e *endpointTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	key := transportKey{endpoint: e.host, target: req.URL.Host}
	if req.URL.Host == e.host {
		key.skipVerify = e.insecure
	} else {
		key.skipVerify = e.c.configuredInsecure(req.URL.Host)
	}
	t, err := e.c.transport(key)
	if err != nil {
		if req.Body != nil {
			_ = req.Body.Close()
		}
		return nil, err
	}
	resp, err := t.RoundTrip(req)
	if err != nil && retryHTTP1(err) && !key.http1 {
		if retry, ok := replayable(req); ok {
			key.http1 = true
			if t, err = e.c.transport(key); err != nil {
				return nil, err
			}
			resp, err = t.RoundTrip(retry)
		}
	}
	if err != nil {
		return nil, e.c.tlsHint(req.URL.Host, err)
	}
	return resp, nil
}

// retryHTTP1 reports whether err is net/http's "the first request on a new
// HTTP/2 connection found it closed": the connection died before it could be
// used, and why (typically the registry's TLS alert that it wants a client
// certificate, which TLS 1.3 delivers after the client's handshake has
// succeeded) is lost. Which of this and the alert itself a request sees is a
// race. Replayed once over HTTP/1.1, where the request's read returns the
// connection's real error, the request either works or fails with the cause
// (and tlsHint's advice).
func retryHTTP1(err error) bool {
	return strings.Contains(err.Error(), "http2: client conn could not be established")
}

// replayable returns a copy of req that can be sent again: one without a
// body, or whose body GetBody recreates.
func replayable(req *http.Request) (*http.Request, bool) {
	if req.Body == nil || req.Body == http.NoBody {
		return req, true
	}
	if req.GetBody == nil {
		return nil, false
	}
	body, err := req.GetBody()
	if err != nil {
		return nil, false
	}
	retry := req.Clone(req.Context())
	retry.Body = body
	return retry, true
}

// tlsHint adds to a TLS failure where podman's TLS settings for host live;
// such failures are permanent (not retried).
func (c *Client) tlsHint(host string, err error) error {
	dir, searched := c.certDir(certsName(host))
	where := dir
	if where == "" {
		where = strings.Join(searched, " or ") + " (subdirectory " + certsName(host) + ")"
	}
	var (
		unknownCA x509.UnknownAuthorityError
		hostErr   x509.HostnameError
		invalid   x509.CertificateInvalidError
	)
	msg := err.Error()
	switch {
	case errors.As(err, &unknownCA):
		return permanent{fmt.Errorf("%w (trust the registry's CA by putting it, as a *.crt file, in %s; see containers-certs.d(5))", err, where)}
	case errors.As(err, &hostErr), errors.As(err, &invalid):
		return permanent{fmt.Errorf("%w (TLS settings read from %s; see containers-certs.d(5))", err, where)}
	case strings.Contains(msg, "tls: certificate required"), strings.Contains(msg, "tls: bad certificate"),
		strings.Contains(msg, "tls: unknown certificate authority"):
		// A remote alert: the registry wants a client certificate it trusts.
		return permanent{fmt.Errorf("%w (the registry wants a client certificate: put it as *.cert with its *.key in %s; see containers-certs.d(5))", err, where)}
	}
	return err
}
