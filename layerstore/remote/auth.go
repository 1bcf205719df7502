package remote

import (
	"context"
	"encoding/base64"
	"net/http"
	"time"

	"github.com/containers/image/v5/docker/reference"
)

// Auth authorizes requests about one repository. authbridge's Transport
// satisfies it; this package never sees credentials otherwise.
type Auth interface {
	// RoundTrip adds credentials to requests for the registry host only,
	// and handles 401 challenges, token refresh and one retry.
	http.RoundTripper
	// EnsureFresh makes sure the credentials stay valid for at least
	// minValidity; the client calls it before background batches.
	EnsureFresh(ctx context.Context, minValidity time.Duration) error
}

// AuthFunc returns the Auth for requests about ref with the given actions
// ("pull", or "pull" and "push"). ref is the image reference as the caller
// gave it, tag or digest included, since credentials may be valid for one
// exact reference only. base is the client's shared transport (connection
// pool, per-registry TLS settings); the returned Auth must send its requests
// through it. The client caches the result per reference and action set.
type AuthFunc func(ref reference.Named, actions []string, base http.RoundTripper) (Auth, error)

// Reauthenticator is implemented by Auths that can drop the token they
// would use next, so that the next request proves access with the
// credentials as they are now (authbridge's Transport does).
type Reauthenticator interface {
	Reauthenticate()
}

// Anonymous returns an Auth that adds nothing: requests pass through to base
// unchanged. (The anonymous token flow of public registries is authbridge's
// job; this is for registries without authentication and for tests.)
func Anonymous(base http.RoundTripper) Auth { return anonymous{base: base} }

type anonymous struct{ base http.RoundTripper }

var _ Auth = anonymous{}

func (a anonymous) RoundTrip(req *http.Request) (*http.Response, error) { return a.base.RoundTrip(req) }

func (anonymous) EnsureFresh(context.Context, time.Duration) error { return nil }

// AnonymousAuthFunc is the AuthFunc used when Options.Auth is nil.
func AnonymousAuthFunc(_ reference.Named, _ []string, base http.RoundTripper) (Auth, error) {
	return Anonymous(base), nil
}

// StaticAuth returns an Auth that sends a fixed Authorization header to
// requests for host (host[:port] as in the URL) and nothing to other hosts.
// It does no challenge handling; it is meant for tests and for Basic-only
// registries.
func StaticAuth(base http.RoundTripper, host, authorization string) Auth {
	return staticAuth{base: base, host: host, authorization: authorization}
}

// BasicAuthorization renders an `Authorization: Basic ...` value.
func BasicAuthorization(user, password string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+password))
}

type staticAuth struct {
	base          http.RoundTripper
	host          string
	authorization string
}

var _ Auth = staticAuth{}

func (s staticAuth) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Host != s.host {
		return s.base.RoundTrip(req)
	}
	r := req.Clone(req.Context())
	r.Header.Set("Authorization", s.authorization)
	return s.base.RoundTrip(r)
}

func (staticAuth) EnsureFresh(context.Context, time.Duration) error { return nil }
