// Package ztoc builds, encodes, reads and verifies zTOCs: SOCI-compatible
// indexes of ordinary gzip (or uncompressed) tar layers that allow random
// access to any file of a layer by fetching and inflating only the
// compressed spans that hold it.
//
// The package is the format and the random-access engine only: it does no
// networking, no logging and no caching beyond what a caller configures. The
// wire formats (flatbuffers zTOC v0.9, gzip checkpoint blob v1/v2, TarZinfo,
// SOCI index manifests v1/v2) are byte-compatible with awslabs/soci-snapshotter.
//
// Everything from outside is bounded by Limits (refusals wrap ErrLimit), every
// entry can be checked against its own tar headers before it is served
// (LayerIndex.CheckHeaderRun, Reader.CheckEntry), and LayerIndex.Verify checks
// a whole zTOC (checkpoints, windows, span digests, every entry) against its
// layer. README.md in this directory states what holds before and after
// verification.
package ztoc
