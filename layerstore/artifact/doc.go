// Package artifact stores lazypull's artifacts — zTOCs and SOCI index
// manifests as content-addressed blobs — and the mappings that find them:
// image key (a salted hash of the image manifest digest) -> SOCI index, and
// layer digest -> zTOC, so images sharing base layers share zTOCs.
//
// The local backend is a directory under the daemon's root (the default,
// nothing to run); the registry backend keeps the same data in a repository
// of any OCI registry so that a fleet shares what one machine indexed.
package artifact
