// Package testenv runs the real parts lazypull's tests and benchmarks need,
// isolated per test: a registry on loopback (Debian's docker-registry, or
// go-containerregistry's in-process one), a pusher for OCI image layouts, a
// request- and byte-counting HTTP proxy in front of a registry, a harness for
// stock podman with its own storage, configuration and registries.conf, and
// file tree comparison (Snapshot, Diff, ExtractImage).
//
// Every helper taking a testing.TB registers its teardown with t.Cleanup and
// skips the test, naming the missing capability, when the machine cannot run
// it (no root, no podman, no docker-registry). The same parts are usable
// outside tests through the New* constructors and Close methods.
//
// Teardown order matters for podman: its images and containers must be
// removed before a layer store they use goes away. t.Cleanup runs functions
// in reverse order of registration, so create the Podman harness after the
// registry and after any layer store it uses.
package testenv
