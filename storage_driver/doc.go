// Package storagedriver is the containers/storage plugin: code compiled into
// a containers/storage based program (podman, buildah) that creates lazily
// served layers in-process through the Additional Layer Store, which is what
// makes lazy pulls work for podman >= 5, buildah and rootless users.
//
// # Why a plugin
//
// containers/image >= 5.31 (podman >= 5.1) consults an Additional Layer
// Store only for layers whose manifest annotation carries a TOC digest
// (eStargz, zstd:chunked). The plain gzip layers lazypull serves through
// SOCI-style indexes never have one, so stock podman pulls them itself.
// Code running next to containers/storage can still ask the store:
// Store.LookupAdditionalLayer takes the layer digest only as a path element,
// and AdditionalLayer.PutAs creates the layer. Pull does exactly that, and
// otherwise pulls like containers/image.
//
// # Pull
//
// Pull resolves the image with containers/image (manifest, manifest list and
// platform choice, signature policy checked before anything else is read,
// config), then for each layer, cheapest first: reuses a verified layer the
// store already has for the blob; asks the Additional Layer Store (the
// daemon builds or finds the layer's zTOC); downloads the blob, verifying
// digest, size and the config's DiffID, and extracts it. Lookups and
// downloads run concurrently, layers are created in order. The image record
// is the one containers/image v5.36's storage destination writes (IDs,
// BigData keys, digests, signatures, metadata, names), so podman images,
// run, inspect, save and rmi, and buildah from, work on it. `lazypull pull`
// exposes Pull for users of stock podman.
//
// # Identity of lazily served layers
//
// A lazily served layer is not verified when it enters the store: its bytes
// are checked span by span as containers read them, and as a whole only
// once the background fetch has them all. containers/storage keeps indexes
// by compressed digest and by uncompressed digest (DiffID) that later pulls
// use to skip downloads. If a lazily served layer were recorded under those
// digests, a store answering with foreign content would get it recorded as
// verified content, and every later ordinary pull of that blob would be
// de-duplicated onto it. So lazily served plain-gzip layers get an identity
// in a namespace of their own, the one containers/storage itself uses for
// TOC-identified layers:
//
//   - The layer store is asked under the reference prefixed with
//     layerstore.TOCRefPrefix ("lazypull-toc:"); its `info` then carries
//     toc-digest = the compressed blob digest (a pseudo TOC digest) and the
//     flag expected-layer-diffid (needed by containers/image to push or save
//     the layer), and neither diff-digest nor compressed-diff-digest.
//     Pull refuses, and removes, a layer that comes back with either.
//   - The layer ID is containers/image's TOC chain ID,
//     sha256(parent + "+@TOC=" + hex(blob digest)) (LayerID), and the image
//     ID the TOC image ID, sha256("@With TOC:" + toc digests) (ImageID):
//     both differ from what a verified pull computes, so a lazily pulled
//     image and a later ordinary pull of the same image coexist, the store's
//     indexes by compressed and uncompressed digest stay true, and the IDs
//     match what containers/image itself gives TOC-identified layers.
//
// Options.Identity = IdentityDiffID (`lazypull pull`'s default, for stock
// podman) trades that separation for sharing: the layer store is asked under
// the image reference itself and the layer gets the record a download would
// write (compressed digest and size, the config's DiffID, the tar size,
// ordinary chain IDs, the config digest as image ID), as podman 4.x gets
// layers from the store. Stock podman >= 5 then reuses the lazy layers and
// image on its own pulls, builds on them without reading them (buildah
// re-reads a parent layer without a DiffID through store.Diff and rewrites
// it, which fails for tar streams with record padding), and takes their
// sizes from the record instead of walking their files (so `podman images`
// works while the store is down).
//
// A pseudo TOC digest cannot collide with a real one for other content: it is
// the sha256 of the compressed blob, which the daemon checks every fetched
// span against.
//
// Promote (`lazypull pull --verify`, `lazypull verify`) ends the separation
// once it is no longer needed: when the layer store has fetched a layer
// completely and verified it as a whole (blob digest, DiffID, every tar
// header), the layer record gets its expected DiffID as uncompressed digest,
// like a downloaded layer. containers/image versions without TOC support
// (podman 4.x, buildah 1.2x), which need a DiffID for every layer, can then
// use the image, and later pulls may share the layer.
//
// # Graph driver
//
// Importing the package registers the graph driver "lazypull" (Driver):
// overlay, with the layer store's mount as Additional Layer Store, and the
// daemon started when it is not running: an installed `lazypull serve`, or
// the importing binary itself re-executed through containers/storage's
// reexec (ReexecServe; the program's main must call reexec.Init first, as
// podman and buildah do). Its options are storage options with the prefix
// "lazypull." (see ParseDriverOptions); unknown ones are errors. The
// exact lines a fork adds are in contrib/README.md.
package storagedriver
