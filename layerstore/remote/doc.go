// Package remote is the registry client of the layer store: it resolves
// image references to manifests and configs, discovers SOCI indexes through
// the OCI referrers API (or the referrers tag), reads byte ranges of layer
// blobs with merging, multi-range requests, redirect caching and retries,
// and pushes blobs, manifests and referrers. It reaches registries as podman
// does: the mirrors, rewrites, blocked and insecure entries of
// registries.conf (through containers/image's sysregistriesv2) for every
// pull request, with failover from a failing mirror to the next endpoint;
// TLS settings per host from certs.d (containers/image's tlsclientconfig);
// proxies from HTTPS_PROXY, HTTP_PROXY and NO_PROXY.
package remote
