// Package authtest provides in-process servers for tests that need a
// registry with real authentication: a TokenServer implementing the
// distribution token specification (GET with Basic or anonymous access,
// OAuth2 POST with password and refresh_token grants), an AuthProxy that
// enforces Bearer or Basic authentication in front of any registry (and can
// answer expired tokens like ECR or S3, and redirect blob reads to a separate
// storage host that must not receive credentials), a minimal BlobRegistry
// upstream, and a settable Clock. Everything is safe for concurrent use and
// keeps counters for assertions.
package authtest
