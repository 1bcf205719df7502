// Package storagedrivertest runs lazypull's containers/storage plugin
// (package storage_driver) end to end with the real parts: containers/storage
// v1.59.1 and containers/image v5.36.2 in-process, `lazypull serve` (FUSE),
// `lazypull pull`, stock podman 4.3.1 and buildah 1.28 from Debian,
// docker-registry on 127.0.0.1 and generated test images; rootless podman as
// a user the test creates. Run as root.
package storagedrivertest
