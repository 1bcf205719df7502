package testenv

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/crypto/bcrypt"
)

// The options of a docker-registry process beyond plain http
// (RegistryOptions):
//
//   - TLS: serve https with a certificate of this CA for 127.0.0.1,
//     localhost and TLSHosts. The registry's URL is https://, and its
//     HTTPClient trusts the CA. Clients that should not know the CA (lazypull,
//     podman) learn it from a certs.d directory (TestCA.WriteCertsD).
//   - ClientCerts (with TLS): accept only clients that present a certificate
//     of the CA (distribution's http.tls.clientcas).
//   - Users (with TLS): accept only requests with Basic credentials of
//     these users (user -> password; distribution's htpasswd auth). The
//     registry's HTTPClient then sends the first user's credentials.
//   - ProxyRemoteURL: run as a pull-through cache of that registry
//     (distribution's proxy.remoteurl). Such a registry refuses pushes; a
//     blob it has not stored yet is answered with the whole blob (200, even
//     to a Range request) streamed from upstream, and stored in the
//     background; once stored, ranges are answered with 206.

// extraConfig renders the configuration lines for these options (appended to
// registryConfig, whose last section is `http:`) and returns the URL scheme.
func (r *Registry) extraConfig(opts RegistryOptions) (string, string, error) {
	var b strings.Builder
	scheme := "http"
	if opts.TLS != nil {
		scheme = "https"
		hosts := append([]string{"127.0.0.1", "localhost"}, opts.TLSHosts...)
		certFile, keyFile, err := opts.TLS.WriteServerFiles(r.Dir, hosts...)
		if err != nil {
			return "", "", err
		}
		fmt.Fprintf(&b, "  tls:\n    certificate: %s\n    key: %s\n", certFile, keyFile)
		if opts.ClientCerts {
			caFile := filepath.Join(r.Dir, "client-ca.crt")
			if err := opts.TLS.WriteCACert(caFile); err != nil {
				return "", "", err
			}
			fmt.Fprintf(&b, "    clientcas:\n      - %s\n", caFile)
		}
		cfg, err := opts.TLS.ClientConfig(opts.ClientCerts)
		if err != nil {
			return "", "", err
		}
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = cfg
		r.HTTPClient = &http.Client{Transport: tr}
	} else if opts.ClientCerts || len(opts.TLSHosts) > 0 {
		return "", "", fmt.Errorf("testenv: ClientCerts and TLSHosts need TLS")
	}
	if len(opts.Users) > 0 {
		if opts.TLS == nil {
			return "", "", fmt.Errorf("testenv: Users need TLS (distribution's htpasswd auth)")
		}
		var lines strings.Builder
		var names []string
		for user, password := range opts.Users {
			hash, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
			if err != nil {
				return "", "", fmt.Errorf("testenv: htpasswd: %w", err)
			}
			fmt.Fprintf(&lines, "%s:%s\n", user, hash)
			names = append(names, user)
		}
		path := filepath.Join(r.Dir, "htpasswd")
		if err := os.WriteFile(path, []byte(lines.String()), 0o600); err != nil {
			return "", "", fmt.Errorf("testenv: %w", err)
		}
		fmt.Fprintf(&b, "auth:\n  htpasswd:\n    realm: lazypull-test\n    path: %s\n", path)
		sort.Strings(names)
		r.HTTPClient = &http.Client{Transport: basicAuth{base: r.HTTPClient.Transport, user: names[0], password: opts.Users[names[0]]}}
	}
	if opts.ProxyRemoteURL != "" {
		fmt.Fprintf(&b, "proxy:\n  remoteurl: %s\n", opts.ProxyRemoteURL)
	}
	return b.String(), scheme, nil
}

// basicAuth adds Basic credentials to every request.
type basicAuth struct {
	base           http.RoundTripper
	user, password string
}

func (a basicAuth) RoundTrip(req *http.Request) (*http.Response, error) {
	r := req.Clone(req.Context())
	r.SetBasicAuth(a.user, a.password)
	return a.base.RoundTrip(r)
}
