package storagedriver

import "errors"

// Errors of a pull.
var (
	// ErrRejected is returned when the signature policy does not allow the
	// image.
	ErrRejected = errors.New("storagedriver: image rejected by the signature policy")
	// ErrUnsupportedImage is returned for images a pull cannot store: schema1
	// manifests, encrypted layers, configs whose DiffIDs do not match the
	// layers.
	ErrUnsupportedImage = errors.New("storagedriver: unsupported image")
	// ErrDigestMismatch is returned when a pulled blob does not have the
	// digest or size the manifest gives it.
	ErrDigestMismatch = errors.New("storagedriver: blob does not match its digest")
	// ErrDiffIDMismatch is returned when a layer's uncompressed content does
	// not have the DiffID the image config gives it.
	ErrDiffIDMismatch = errors.New("storagedriver: layer does not match the config's DiffID")
	// ErrUnsafeIdentity is returned when the layer store answered a lazy
	// lookup with another identity than the one asked for (for IdentityTOC,
	// a compressed or uncompressed digest; for IdentityDiffID, another
	// digest or size than the manifest's and the config's, or a TOC digest);
	// such a layer is removed again.
	ErrUnsafeIdentity = errors.New("storagedriver: layer store returned a layer with a verified-looking identity")
)

// Errors of the graph driver.
var (
	// ErrBadOption is returned for an unknown, repeated or malformed
	// lazypull.* storage option.
	ErrBadOption = errors.New("storagedriver: bad storage option")
	// ErrDaemonStart is returned when the layer store daemon is not running
	// and could not be started.
	ErrDaemonStart = errors.New("storagedriver: layer store daemon not running")
)
