package testenv

import (
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
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
	if opts.ProxyRemoteURL != "" {
		fmt.Fprintf(&b, "proxy:\n  remoteurl: %s\n", opts.ProxyRemoteURL)
	}
	return b.String(), scheme, nil
}
