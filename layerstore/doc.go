// Package layerstore is the Additional Layer Store daemon behind
// `lazypull serve`: a FUSE filesystem that containers/storage consults for
// layers of images being pulled, serving each layer's files lazily from the
// registry through its zTOC, with an on-disk span cache, background prefetch,
// verification and an artifact store for SOCI indexes.
package layerstore
