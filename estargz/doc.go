// Package estargz reads eStargz layers (stargz-snapshotter's
// docs/estargz.md): gzip tar layers in which every regular file's data (or
// each chunk of it) starts a gzip member of its own, with a TOC
// (stargz.index.json, the last tar entry, in a member of its own) and a
// 51-byte footer giving the TOC's offset.
//
// ParseFooter finds the TOC; Open checks the TOC JSON against the layer's
// TOC digest (the containerd.io/snapshot/stargz/toc.digest annotation) and
// builds a tocindex.Index: the file table (with the TOC's own entry, which
// an extraction of the layer writes too), the chunks' places (innerOffset
// included), the prioritized files before the prefetch landmark, and the
// spans. Codec decompresses regions with github.com/klauspost/compress.
//
// The package does no networking and no logging. README.md states the
// format facts it relies on and what is checked when.
package estargz
