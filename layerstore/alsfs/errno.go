package alsfs

import (
	"context"
	"errors"
	"syscall"
)

var (
	// ErrInvalidLayer is returned when a layer's entries cannot be served
	// exactly as containers/storage would extract them (a path escaping
	// the root, a hard link to a missing file, an unknown entry type,
	// ...). Such a layer is answered with ENOENT.
	ErrInvalidLayer = errors.New("alsfs: layer cannot be served")
	// ErrMounted is returned when a live filesystem is already mounted at
	// the mount point.
	ErrMounted = errors.New("alsfs: mount point is in use")
	// ErrClosed is returned for lookups after the filesystem was
	// unmounted.
	ErrClosed = errors.New("alsfs: filesystem is unmounted")
)

// The only conversion of errors to errnos. Mapping:
//
//	any error of a lookup                        -> ENOENT (the host then
//	                                                pulls the layer normally)
//	reading data:
//	  context.Canceled, context.DeadlineExceeded -> EINTR (the read was
//	                                                interrupted; Go callers
//	                                                retry EINTR)
//	  any other error                            -> EIO
//
// Lookups ignore interrupts (see filesystem.view). Every write operation
// answers EROFS without an error value; creating `use` and removing a layer
// directory answer ENOENT (see layerDir.Create and rmdirLayer).
func lookupErrno(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	return syscall.ENOENT
}

func dataErrno(err error) syscall.Errno {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return syscall.EINTR
	default:
		return syscall.EIO
	}
}
