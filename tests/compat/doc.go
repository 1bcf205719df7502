// Package compat tests lazypull's zTOC implementation (package ztoc)
// against the real awslabs/soci-snapshotter v0.16.1, whose ztoc package
// uses zlib through cgo (install zlib1g-dev). It is a module of its own so
// that the product does not depend on SOCI; run it with
//
//	make test-compat
//	(cd tests/compat && GOFLAGS=-mod=mod go test -count=1 -timeout 30m ./...)
//
// The layers are generated deterministically (tests/imagegen, plus a few
// shapes derived here) and cached under imagegen.CacheDir(): single-member
// gzip of mixed content (at least 50 MB, with hard links, symlinks, devices,
// PAX long names and xattrs), many small files, big incompressible files,
// multi-member gzip (3 MiB members, and BGZF-like 64 KiB members with an
// extra header field), pgzip with sync-flushed blocks, gzip by the standard
// library with a file name in its header, uncompressed tar, and tar padded
// to 10 KiB records as GNU tar writes it. For every shape:
//
//   - SOCI's zTOC, decoded and served by lazypull, gives every file's bytes
//     as the tar holds them, and the whole tar stream;
//   - lazypull's zTOC, unmarshalled by SOCI, gives the same file table as
//     SOCI's own, and SOCI extracts every span whole and a sample of files
//     with ExtractFile, all equal to the tar's bytes;
//   - the checkpoints (in, out, bits, 32 KiB window), span digests and file
//     tables built by both are equal (the TarZinfo for uncompressed tar).
//
// SOCI index manifests are tested both ways: lazypull's BuildIndexV1/V2
// read by SOCI's UnmarshalIndex, SOCI's NewIndex/MarshalIndex read by
// ParseIndex, and whole indexes built by SOCI's IndexBuilder (v1 with a
// prefetch artifact, and v2 through Convert) read by lazypull.
//
// BenchmarkBuild compares lazypull's builder with compress/gzip and SOCI's
// builder on a 238 MB layer:
//
//	cd tests/compat && GOFLAGS=-mod=mod go test -run '^$' -bench . -benchmem
package compat
