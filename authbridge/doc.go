// Package authbridge owns registry credentials and tokens: it finds
// credentials exactly as podman does (auth files, credential helpers,
// credentials handed over by podman's additional-layer-store auth helper),
// exchanges them for registry tokens, and refreshes those tokens before they
// expire so that background fetches hours after a pull never fail.
//
// # Credentials
//
// A Manager looks credentials up for an image reference in this order:
//
//  1. Credentials podman handed over for exactly that reference
//     (ParseAuthHelperInput, Manager.Handover), kept in a HandoverStore: in
//     memory only unless Options.HandoverPersist (then also in a 0600 file
//     replaced atomically, for Options.HandoverPersistTTL, 1 h), used for
//     Options.HandoverTTL (24 h) after podman last handed them over, and
//     deleted when podman hands the reference over as anonymous (a pull
//     after `podman logout`).
//  2. containers/image's pkg/docker/config (GetCredentialsForRef), which gives
//     podman's search order: Options.AuthFile alone when set, else
//     $XDG_RUNTIME_DIR/containers/auth.json (/run/containers/<uid>/auth.json),
//     $XDG_CONFIG_HOME/containers/auth.json, $DOCKER_CONFIG/config.json or
//     ~/.docker/config.json, ~/.dockercfg; credHelpers entries and the
//     registries.conf credential-helpers list; repository-scoped keys, most
//     specific first. REGISTRY_AUTH_FILE must be mapped to Options.AuthFile by
//     the caller. The sources are read again for every token fetch, so
//     `podman login` takes effect without a restart.
//
// # Tokens
//
// Manager.Transport returns an http.RoundTripper for one image reference and
// set of actions. It learns the registry's challenge from the first 401 (or
// from a GET /v2/ probe in EnsureFresh), fetches Bearer tokens (GET with Basic
// or anonymous auth; OAuth2 POST with the refresh_token grant for identity
// tokens, falling back to GET when the token server lacks POST) or sends
// Basic credentials to Basic-only registries. A token's expiry is issued_at
// (or the time the request was sent) plus expires_in (60 s when absent). No
// request starts with a token that has less than RefreshMargin left:
// max(10 s, 20 % of its lifetime), capped at half the lifetime for tokens
// shorter than 20 s. Transport.EnsureFresh lets a prefetcher demand more;
// Transport.Reauthenticate drops the token so that the next request proves
// access with the credentials as they are now (after `podman logout`, a
// cached token would otherwise keep working until its refresh margin).
// Concurrent fetches for one registry, scope and credential source are merged
// into one. A rejection (401, ECR-style 403 "expired", S3-style 400
// ExpiredToken) drops the token, fetches a new one and retries once if the
// request body can be replayed; a second rejection is ErrUnauthorized. A
// failed token fetch is remembered for Options.FailureBackoff (1 s) only.
//
// # Security
//
// Authorization is only ever added to requests for the reference's registry
// host; requests to other hosts, such as redirects to object storage, pass
// through untouched. Passwords, identity tokens and registry tokens never
// appear in errors, logs, Credential.String or Stats; URLs in errors lose
// their query. Errors wrap the sentinel ErrXxx values of this package.
package authbridge
