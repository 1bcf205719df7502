package testenv

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestCA is a certificate authority made for one test: it issues server
// certificates for the names a test registry is reached by and client
// certificates, and writes certs.d directories the way podman reads them
// (containers-certs.d(5)). Nothing outside the test trusts it.
type TestCA struct {
	// Cert is the CA certificate, CertPEM its PEM encoding.
	Cert    *x509.Certificate
	CertPEM []byte

	key    *ecdsa.PrivateKey
	serial int64
}

// NewTestCA makes a CA named name, failing the test when it cannot.
func NewTestCA(t testing.TB, name string) *TestCA {
	t.Helper()
	ca, err := NewCA(name)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// NewCA makes a CA named name, valid for a day.
func NewCA(name string) (*TestCA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("testenv: CA key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name, Organization: []string{"lazypull tests"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("testenv: CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("testenv: CA certificate: %w", err)
	}
	return &TestCA{Cert: cert, CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), key: key, serial: 1}, nil
}

// Pool returns a pool holding only the CA.
func (ca *TestCA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// Issue returns a certificate and its key, PEM-encoded, for a server
// reachable by hosts (names or IP addresses), or with client set, for a TLS
// client named by hosts[0].
func (ca *TestCA) Issue(client bool, hosts ...string) (certPEM, keyPEM []byte, err error) {
	if len(hosts) == 0 {
		return nil, nil, fmt.Errorf("testenv: Issue needs a name")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("testenv: key: %w", err)
	}
	ca.serial++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(ca.serial),
		Subject:      pkix.Name{CommonName: hosts[0]},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if client {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	} else {
		for _, h := range hosts {
			if ip := net.ParseIP(h); ip != nil {
				tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			} else {
				tmpl.DNSNames = append(tmpl.DNSNames, h)
			}
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, nil, fmt.Errorf("testenv: certificate: %w", err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("testenv: key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), nil
}

// ServerConfig returns a TLS server configuration with a certificate for
// hosts; with clientAuth, clients must present a certificate of this CA.
func (ca *TestCA) ServerConfig(clientAuth bool, hosts ...string) (*tls.Config, error) {
	certPEM, keyPEM, err := ca.Issue(false, hosts...)
	if err != nil {
		return nil, err
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("testenv: %w", err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if clientAuth {
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
		cfg.ClientCAs = ca.Pool()
	}
	return cfg, nil
}

// WriteServerFiles writes a server certificate for hosts and its key into
// dir (server.crt, server.key) and returns their paths.
func (ca *TestCA) WriteServerFiles(dir string, hosts ...string) (certFile, keyFile string, err error) {
	certPEM, keyPEM, err := ca.Issue(false, hosts...)
	if err != nil {
		return "", "", err
	}
	certFile, keyFile = filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")
	if err := os.WriteFile(certFile, certPEM, 0o644); err != nil {
		return "", "", fmt.Errorf("testenv: %w", err)
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		return "", "", fmt.Errorf("testenv: %w", err)
	}
	return certFile, keyFile, nil
}

// WriteCACert writes the CA certificate to path.
func (ca *TestCA) WriteCACert(path string) error {
	if err := os.WriteFile(path, ca.CertPEM, 0o644); err != nil {
		return fmt.Errorf("testenv: %w", err)
	}
	return nil
}

// CertsDirOptions choose what WriteCertsD puts into a host's directory.
type CertsDirOptions struct {
	// CA writes ca.crt (the CA certificate).
	CA bool
	// Client writes client.cert and client.key, a client certificate of
	// this CA.
	Client bool
}

// WriteCertsD writes root/<host>/ as podman's certs.d directories hold a
// registry's TLS settings and returns that directory.
func (ca *TestCA) WriteCertsD(root, host string, o CertsDirOptions) (string, error) {
	dir := filepath.Join(root, host)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("testenv: %w", err)
	}
	if o.CA {
		if err := ca.WriteCACert(filepath.Join(dir, "ca.crt")); err != nil {
			return "", err
		}
	}
	if o.Client {
		certPEM, keyPEM, err := ca.Issue(true, "lazypull-test-client")
		if err != nil {
			return "", err
		}
		if err := os.WriteFile(filepath.Join(dir, "client.cert"), certPEM, 0o644); err != nil {
			return "", fmt.Errorf("testenv: %w", err)
		}
		if err := os.WriteFile(filepath.Join(dir, "client.key"), keyPEM, 0o600); err != nil {
			return "", fmt.Errorf("testenv: %w", err)
		}
	}
	return dir, nil
}

// ClientConfig returns a TLS client configuration trusting only the CA,
// with a client certificate of it when withCert is set.
func (ca *TestCA) ClientConfig(withCert bool) (*tls.Config, error) {
	cfg := &tls.Config{RootCAs: ca.Pool(), MinVersion: tls.VersionTLS12}
	if withCert {
		certPEM, keyPEM, err := ca.Issue(true, "lazypull-test-client")
		if err != nil {
			return nil, err
		}
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return nil, fmt.Errorf("testenv: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// LoopbackHostname returns this machine's host name when it resolves to
// loopback addresses only (Debian's /etc/hosts maps it so), for tests that
// need a registry name that is not "localhost" or an IP literal: Go and
// podman never use a proxy for those, whatever HTTPS_PROXY says. It skips
// the test otherwise.
func LoopbackHostname(t testing.TB) string {
	t.Helper()
	name, err := os.Hostname()
	if err != nil || name == "" || name == "localhost" {
		t.Skipf("needs a host name other than localhost that resolves to 127.0.0.1 (/etc/hosts): %q, %v", name, err)
	}
	addrs, err := net.LookupHost(name)
	if err != nil || len(addrs) == 0 {
		t.Skipf("needs the host name %q to resolve to 127.0.0.1 (/etc/hosts): %v", name, err)
	}
	for _, a := range addrs {
		if a != "127.0.0.1" {
			t.Skipf("needs the host name %q to resolve to 127.0.0.1 only (/etc/hosts), it resolves to %v", name, addrs)
		}
	}
	return name
}
