package remote

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Sentinel errors. Errors returned by this package wrap one of them where it
// applies; test with errors.Is.
var (
	// ErrNotFound: the registry answered 404 or a *_UNKNOWN error code
	// (MANIFEST_UNKNOWN, BLOB_UNKNOWN, NAME_UNKNOWN).
	ErrNotFound = errors.New("not found")
	// ErrUnauthorized: the registry answered 401 or 403 even after the Auth
	// transport had its chance to authenticate.
	ErrUnauthorized = errors.New("unauthorized")
	// ErrUnsupported: the content or the request is of a kind this client
	// does not handle (schema1 manifests, nested indexes, unknown media
	// types, unsupported digest algorithms).
	ErrUnsupported = errors.New("unsupported")
	// ErrDigestMismatch: content did not hash to the digest it was fetched by.
	ErrDigestMismatch = errors.New("digest mismatch")
	// ErrTruncated: a response body ended before the promised length, and
	// retries did not help.
	ErrTruncated = errors.New("truncated response body")
	// ErrInvalidResponse: the registry answered something malformed (bad
	// Content-Range, parts that do not cover the request, wrong sizes).
	ErrInvalidResponse = errors.New("invalid registry response")
	// ErrTooLarge: a manifest or small blob exceeds the configured limit.
	ErrTooLarge = errors.New("content too large")
	// ErrInvalidRange: a requested range lies outside the blob.
	ErrInvalidRange = errors.New("invalid range")
	// ErrBlocked: registries.conf marks the registry `blocked = true` (the
	// error is a *BlockedError).
	ErrBlocked = errors.New("registry is blocked")
	// ErrInsecureRedirect: a registry redirected an https request to plain
	// http on a host not configured insecure.
	ErrInsecureRedirect = errors.New("redirect to an insecure location")
)

// ErrorDetail is one entry of the `errors` array of a registry error body
// (distribution spec, "Error Codes").
type ErrorDetail struct {
	Code    string          `json:"code"`
	Message string          `json:"message,omitempty"`
	Detail  json.RawMessage `json:"detail,omitempty"`
}

// Error is an unexpected HTTP status from a registry or storage host. Its URL
// never contains the query string (signed URLs carry credentials there).
type Error struct {
	// Method and URL (redacted) of the failing request.
	Method string
	URL    string
	// StatusCode is the HTTP status of the answer.
	StatusCode int
	// Details are the parsed `errors` of the body, if it had any.
	Details []ErrorDetail
	// RetryAfter is the parsed Retry-After header (0 when absent).
	RetryAfter time.Duration
}

// Error implements error.
func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s: %d %s", e.Method, e.URL, e.StatusCode, http.StatusText(e.StatusCode))
	for i, d := range e.Details {
		if i == 0 {
			b.WriteString(":")
		} else {
			b.WriteString(";")
		}
		b.WriteString(" ")
		b.WriteString(d.Code)
		if d.Message != "" {
			b.WriteString(": ")
			b.WriteString(d.Message)
		}
	}
	return b.String()
}

// Is maps the status and error codes to the package's sentinels.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrNotFound:
		return e.StatusCode == http.StatusNotFound || e.hasCode("MANIFEST_UNKNOWN", "BLOB_UNKNOWN", "NAME_UNKNOWN")
	case ErrUnauthorized:
		return e.StatusCode == http.StatusUnauthorized || e.StatusCode == http.StatusForbidden ||
			e.hasCode("UNAUTHORIZED", "DENIED")
	case ErrUnsupported:
		return e.hasCode("UNSUPPORTED")
	}
	return false
}

// Temporary reports whether retrying the request may succeed: 408, 429 and
// 5xx except 501.
func (e *Error) Temporary() bool {
	switch {
	case e.StatusCode == http.StatusRequestTimeout, e.StatusCode == http.StatusTooManyRequests:
		return true
	case e.StatusCode == http.StatusNotImplemented:
		return false
	case e.StatusCode >= 500:
		return true
	}
	return false
}

func (e *Error) hasCode(codes ...string) bool {
	for _, d := range e.Details {
		for _, c := range codes {
			if d.Code == c {
				return true
			}
		}
	}
	return false
}

// maxErrorBody bounds how much of an error body is read.
const maxErrorBody = 64 << 10

// responseError builds an *Error from resp and closes its body.
func responseError(resp *http.Response) *Error {
	e := &Error{StatusCode: resp.StatusCode}
	if resp.Request != nil {
		e.Method = resp.Request.Method
		e.URL = redactURL(resp.Request.URL)
	}
	e.RetryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
	if resp.Body != nil {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		_ = resp.Body.Close()
		var parsed struct {
			Errors []ErrorDetail `json:"errors"`
		}
		if json.Unmarshal(body, &parsed) == nil {
			e.Details = parsed.Errors
		}
	}
	return e
}

// parseRetryAfter parses a Retry-After value (delay in seconds or HTTP date).
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs <= 0 {
			return 0
		}
		if secs > int64(24*time.Hour/time.Second) {
			secs = int64(24 * time.Hour / time.Second)
		}
		return time.Duration(secs) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := t.Sub(now); d > 0 {
			return d
		}
	}
	return 0
}

// redactURL renders u without user info, query and fragment.
func redactURL(u *url.URL) string {
	if u == nil {
		return ""
	}
	c := url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path, RawPath: u.RawPath}
	s := c.String()
	if u.RawQuery != "" {
		s += "?REDACTED"
	}
	return s
}

// redactError rewrites the URL of *url.Error values (as returned by
// http.Client.Do) so that signed query strings never appear in errors.
func redactError(err error) error {
	var ue *url.Error
	if !errors.As(err, &ue) {
		return err
	}
	u, perr := url.Parse(ue.URL)
	if perr != nil {
		return &url.Error{Op: ue.Op, URL: "(unparsable URL)", Err: ue.Err}
	}
	return &url.Error{Op: ue.Op, URL: redactURL(u), Err: ue.Err}
}
