// Package alsfs is the FUSE filesystem of the Additional Layer Store: the
// directory tree that containers/storage's overlay driver stats, reads and
// symlinks into when an image is pulled, serving each layer's files from a
// LayerContent and its metadata from a Resolver.
//
// # Tree
//
//	<mnt>/<base64(image ref)>/<layer digest>/{diff/,info,blob}   (":ref" store)
//	<mnt>/<layer digest>/{diff/,info,blob}                       (store without ":ref")
//
// A layer directory exists once Resolver.Lookup succeeds for it; every
// failure, every unknown or malformed name, and every layer whose diff tree
// cannot be served exactly is answered with ENOENT, so that the host pulls
// the layer the ordinary way. Nothing that can fail is left for later: the
// `info` bytes are fixed and the diff tree is built while the layer directory
// is looked up, because a failure after a successful lookup aborts the pull.
// Negative lookups are never cached by the kernel (a layer may become
// servable later); positive entries, attributes and file contents are.
//
// # Use and release
//
// containers/storage (v1.43 and later) counts references by creating the
// file `use` in a layer directory and releases them by removing the layer
// directory. Both calls reach Resolver.Use and Resolver.Release and are
// answered with ENOENT, which the host takes as "the store counts
// references" without logging anything. The file `diff1` that the host looks
// for next to a lower layer does not exist.
//
// # Diff tree
//
// The diff tree is what containers/storage's overlay driver would extract
// from the layer tar (archive.Unpack with the overlay whiteout converter),
// see build.go for the rules; notably `.wh.NAME` becomes a character device
// 0:0 named NAME and `.wh..wh..opq` becomes the opaque xattr on its
// directory.
//
// # Errors
//
// Errors of a Resolver, Layer or LayerContent become errnos in one place
// (errno.go): any failure of a lookup is ENOENT; a read fails with EINTR
// when the LayerContent reports a canceled context (the reader was
// interrupted; Go callers retry) and with EIO otherwise. Writes of every
// kind are EROFS.
package alsfs
