package authbridge

import (
	"context"
	"errors"
	"net"
	"net/url"
)

// Sentinel errors. Every error returned by this package wraps one of them
// (test with errors.Is) together with context that never contains a secret.
var (
	// ErrUnauthorized is returned when credentials are missing or were
	// rejected: the token server answered 401, or the registry still rejected
	// the request after one token refresh and retry.
	ErrUnauthorized = errors.New("authbridge: unauthorized")
	// ErrDenied is returned when the token server refuses access (403) to an
	// authenticated user.
	ErrDenied = errors.New("authbridge: access denied")
	// ErrTokenServer is returned when the token server cannot be reached,
	// answers with an unexpected status (5xx, 429, ...) or sends an answer
	// without a token.
	ErrTokenServer = errors.New("authbridge: token server unavailable")
	// ErrRegistryUnreachable is returned when the registry host cannot be
	// reached (DNS failure, connection refused, TLS failure, timeout).
	ErrRegistryUnreachable = errors.New("authbridge: registry unreachable")
	// ErrBadChallenge is returned when a registry answers 401 without a
	// WWW-Authenticate challenge this package can use.
	ErrBadChallenge = errors.New("authbridge: unusable authentication challenge")
	// ErrCredentials is returned when the credential sources (auth files,
	// credential helpers, registries.conf) cannot be read.
	ErrCredentials = errors.New("authbridge: reading credentials")
	// ErrInvalidHelperInput is returned by ParseAuthHelperInput for input
	// that is not the JSON object containers/image writes.
	ErrInvalidHelperInput = errors.New("authbridge: invalid auth helper input")
	// ErrCorruptHandover is returned when the file of handed-over credentials
	// cannot be decoded; the store then starts empty.
	ErrCorruptHandover = errors.New("authbridge: corrupt handed-over credentials file")
	// ErrInvalidReference is returned for image references that cannot be
	// parsed.
	ErrInvalidReference = errors.New("authbridge: invalid image reference")
	// ErrClosed is returned by a Manager (and its transports) after Close.
	ErrClosed = errors.New("authbridge: manager closed")
)

// isNetworkError reports whether err is a failure to reach a host (as
// opposed to a cancelled context).
func isNetworkError(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var netErr net.Error
	var dnsErr *net.DNSError
	var opErr *net.OpError
	return errors.As(err, &dnsErr) || errors.As(err, &opErr) || errors.As(err, &netErr)
}

// redactURL returns u without user info, query and fragment: signed URLs and
// token requests carry secrets in the query, paths do not.
func redactURL(u *url.URL) string {
	if u == nil {
		return "<nil>"
	}
	c := url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path}
	return c.String()
}
