// Package storagedriver is the containers/storage plugin: code compiled into
// a containers/storage based program (podman, buildah) that creates lazily
// served layers in-process through the Additional Layer Store, which is what
// makes lazy pulls work for podman >= 5, buildah and rootless users.
package storagedriver
