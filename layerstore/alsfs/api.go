package alsfs

import (
	"context"
	"io"
	"os"
	"time"

	"github.com/lazypull/lazypull/ztoc"
	digest "github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
)

// Resolver answers the host's lookups of layers.
//
// Lookup runs once per layer directory: concurrent lookups of the same
// (ref, layer) pair are merged into one call, and a successful result is
// kept until the directory is evicted (Server.Evict, EvictLayer, EvictIdle)
// and the kernel has let go of it; then Layer.Release is called. Failures
// are not remembered: the next lookup calls Lookup again.
type Resolver interface {
	// Lookup returns the layer `layer` of the image `ref`, or an error; any
	// error makes the layer directory not exist (ENOENT), so the host pulls
	// the layer normally. ref is "" for a store mounted without ":ref". ctx
	// is canceled when the filesystem is unmounted, not when the request
	// that caused the lookup is interrupted; the host waits for the
	// answer, so Lookup should bound its own time.
	Lookup(ctx context.Context, ref string, layer digest.Digest) (Layer, error)
	// Use records one more reference to the layer (the host created the
	// file `use` in the layer directory). It must not block.
	Use(ref string, layer digest.Digest)
	// Release drops one reference to the layer (the host removed the layer
	// directory). It must not block. The layer directory stays servable:
	// layers the host created from it point into it.
	Release(ref string, layer digest.Digest)
}

// Reauthorizer is a Resolver that decides again, on every lookup of a layer
// directory of an image ref it already serves, whether the directory may
// still be served: the kernel asks again once Options.LayerDirTimeout has
// passed since the last lookup, so a path walk (a container start, a stat
// of the layer) reaches Reauthorize at least that often. An error evicts the
// directory and fails the lookup with ENOENT (open files and overlay mounts
// keep what they hold). It is not called for a directory just resolved by
// Lookup, nor for <mnt>/<digest> (no ref to authorize). It may block (it is
// bounded like Lookup).
type Reauthorizer interface {
	Reauthorize(ctx context.Context, ref string, layer digest.Digest) error
}

// Layer is a layer the store can serve.
type Layer interface {
	// Info returns the content of the file `info`: the JSON object that
	// containers/storage decodes into its Layer struct. It is read once,
	// when the layer directory is looked up.
	Info() ([]byte, error)
	// Blob returns the compressed layer served as the file `blob` and its
	// size. If the reader also implements ContextReaderAt, reads use it.
	Blob() (io.ReaderAt, int64)
	// Content returns the layer's file table and file data. It is called
	// once, when the layer directory is looked up.
	Content() (LayerContent, error)
	// Release is called once when the filesystem no longer serves the
	// layer through this directory: it was evicted and the kernel forgot
	// it, or the filesystem was unmounted. Nothing of the Layer is used
	// afterwards.
	Release()
}

// LayerContent is one layer's file table and file data.
type LayerContent interface {
	// Entries returns the tar entries of the layer in stream order. The
	// slice must not change afterwards.
	Entries() []ztoc.FileMetadata
	// ReadFile reads the data of regular file i (an index into Entries)
	// at off. It fills p unless the file ends first; io.EOF may accompany
	// the last bytes. Any other error fails the read with EIO, except an
	// error wrapping context.Canceled or context.DeadlineExceeded, which
	// fails it with EINTR.
	//
	// ctx is canceled when the reading process is interrupted by a
	// signal; Go programs are, now and then, by their own runtime
	// (SIGURG). An implementation may stop waiting then, but should not
	// abort work other readers share (a span fetch).
	ReadFile(ctx context.Context, i int, p []byte, off int64) (int, error)
}

// BackingFiler is a LayerContent that can give the kernel a file holding
// exactly the bytes of regular file i, for FUSE passthrough: reads of the
// opened file then go to that file without reaching the daemon. ok is false
// when it has none (then reads come through ReadFile). The FUSE tree closes
// the file when the kernel releases the open file.
type BackingFiler interface {
	BackingFile(i int) (f *os.File, ok bool)
}

// ContextReaderAt is an io.ReaderAt that can also be canceled. A Layer's
// blob reader may implement it; reads of the file `blob` then pass the
// request's context.
type ContextReaderAt interface {
	ReadAtContext(ctx context.Context, p []byte, off int64) (int, error)
}

// Defaults of Options.
const (
	// DefaultCacheTimeout is the default Options.CacheTimeout.
	DefaultCacheTimeout = time.Hour
	// DefaultLayerDirTimeout is the default Options.LayerDirTimeout.
	DefaultLayerDirTimeout = 5 * time.Second
	// DefaultMaxRead is the default Options.MaxRead (1 MiB, the most a
	// Linux kernel sends in one FUSE request).
	DefaultMaxRead = 1 << 20
	// DefaultMaxBackground is the default Options.MaxBackground.
	DefaultMaxBackground = 64
	// DefaultReadAheadKB is the default Options.ReadAheadKB (1 MiB).
	DefaultReadAheadKB = 1024
)

// Opaque-directory xattr names written by containers/storage: the first
// when it runs as root, the second when it runs rootless (the overlay
// "userxattr" mode).
const (
	TrustedOpaqueXattr = "trusted.overlay.opaque"
	UserOpaqueXattr    = "user.overlay.opaque"
)

// Options configures the filesystem. The zero value is valid.
type Options struct {
	// CacheTimeout is how long the kernel may cache directory entries and
	// attributes that exist. Layers never change, so it only bounds how
	// long a layer dropped with Server.Evict may still be seen.
	// Default DefaultCacheTimeout.
	CacheTimeout time.Duration
	// LayerDirTimeout is how long the kernel may cache the entries of
	// layer directories (and of ref directories above them) before a path
	// walk asks the filesystem again; each such lookup counts as use of
	// the layer directory (see Server.EvictIdle) and lets the Resolver
	// decide again once the directory was evicted. Open files and overlay
	// mounts hold their directories regardless. Default
	// DefaultLayerDirTimeout.
	LayerDirTimeout time.Duration
	// OpaqueXattrs lists the xattrs set to "y" on a directory made opaque
	// by a `.wh..wh..opq` entry. Default DefaultOpaqueXattrs(): what
	// containers/storage run with the daemon's privileges would write.
	// Set both TrustedOpaqueXattr and UserOpaqueXattr when a daemon
	// running as root serves rootless podman too (the extra xattr is
	// visible, and copied up, in containers of the other kind).
	OpaqueXattrs []string
	// MaxRead is the largest read request the kernel sends, in bytes.
	// Default DefaultMaxRead.
	MaxRead int
	// MaxBackground is how many asynchronous requests (readahead) the
	// kernel keeps in flight. Default DefaultMaxBackground.
	MaxBackground int
	// ReadAheadKB is written to the mount's
	// /sys/class/bdi/<dev>/read_ahead_kb after mounting (best effort), so
	// that sequential reads reach the filesystem in requests of up to
	// this size instead of the kernel's 128 KiB. Default
	// DefaultReadAheadKB; negative leaves the kernel's setting.
	ReadAheadKB int
	// SingleUser mounts without allow_other, so that only the user
	// running the daemon can access the mount. By default the mount
	// allows every user, which a non-root daemon may only do when
	// /etc/fuse.conf contains user_allow_other.
	SingleUser bool
	// SkipPermissionChecks mounts without default_permissions: the kernel
	// then does not check file modes and owners, so any user who can
	// reach the mount point can read every file of every layer. Default
	// false (modes are enforced, as on a disk).
	SkipPermissionChecks bool
	// Log receives Warn messages for layers that are refused and, with
	// Debug, go-fuse's request trace. Default nil: silent.
	Log *logrus.Entry
	// Debug traces every FUSE request to Log at debug level.
	Debug bool
}

// DefaultOpaqueXattrs returns the opaque-directory xattr containers/storage
// writes when run with the privileges of this process: TrustedOpaqueXattr
// for root, UserOpaqueXattr otherwise.
func DefaultOpaqueXattrs() []string {
	if os.Geteuid() == 0 {
		return []string{TrustedOpaqueXattr}
	}
	return []string{UserOpaqueXattr}
}

func (o Options) withDefaults() Options {
	if o.CacheTimeout <= 0 {
		o.CacheTimeout = DefaultCacheTimeout
	}
	if o.LayerDirTimeout <= 0 {
		o.LayerDirTimeout = DefaultLayerDirTimeout
	}
	if len(o.OpaqueXattrs) == 0 {
		o.OpaqueXattrs = DefaultOpaqueXattrs()
	}
	if o.MaxRead <= 0 {
		o.MaxRead = DefaultMaxRead
	}
	if o.MaxBackground <= 0 {
		o.MaxBackground = DefaultMaxBackground
	}
	if o.ReadAheadKB == 0 {
		o.ReadAheadKB = DefaultReadAheadKB
	}
	return o
}
