// Package remote is the registry client of the layer store: it resolves
// image references to manifests and configs, discovers SOCI indexes through
// the OCI referrers API (or the referrers tag), reads byte ranges of layer
// blobs with merging, multi-range requests, redirect caching and retries,
// and pushes blobs, manifests and referrers.
package remote
