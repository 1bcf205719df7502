// Package ztoc builds, encodes and reads zTOCs: SOCI-compatible indexes of
// ordinary gzip (or uncompressed) tar layers that allow random access to any
// file of a layer by fetching and inflating only the compressed spans that
// hold it.
//
// The package is the format and the random-access engine only: it does no
// networking, no logging and no caching beyond what a caller configures. The
// wire formats (flatbuffers zTOC v0.9, gzip checkpoint blob v1/v2, TarZinfo,
// SOCI index manifests v1/v2) are byte-compatible with awslabs/soci-snapshotter;
// see README.md in this directory.
package ztoc
