package alsfs

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	digest "github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// Server is a mounted store filesystem.
type Server struct {
	mountpoint string
	srv        *fuse.Server
	fs         *filesystem
	root       *rootNode
	closeOnce  sync.Once
}

// Mount mounts the store filesystem at mountpoint, an existing directory,
// and serves it until Unmount. A stale mount left there by a crashed
// daemon is cleaned first (CleanStaleMount); a live one is an error
// (ErrMounted).
//
// The mount: "fuse.lazypull", mounted directly by mount(2) when running as
// root (fusermount3 otherwise), nosuid and nodev, allow_other unless
// Options.SingleUser (a non-root daemon needs user_allow_other in
// /etc/fuse.conf for it), default_permissions unless
// Options.SkipPermissionChecks, no file locks, reads of up to
// Options.MaxRead bytes. The kernel caches positive entries and
// attributes for Options.CacheTimeout and file contents, directory
// listings and symlink targets indefinitely; it never caches failed
// lookups.
func Mount(mountpoint string, r Resolver, opts Options) (*Server, error) {
	if r == nil {
		return nil, errors.New("alsfs: mount: nil Resolver")
	}
	abs, err := filepath.Abs(mountpoint)
	if err != nil {
		return nil, fmt.Errorf("alsfs: mount %s: %w", mountpoint, err)
	}
	if err := CleanStaleMount(abs); err != nil {
		return nil, err
	}
	f := newFilesystem(r, opts)
	root := &rootNode{f: f}
	srv, err := fs.Mount(abs, root, f.nodeFSOptions())
	if err != nil {
		f.close()
		return nil, fmt.Errorf("alsfs: mount %s: %w", abs, err)
	}
	s := &Server{mountpoint: abs, srv: srv, fs: f, root: root}
	if kb := f.opts.ReadAheadKB; kb > 0 {
		if err := setReadAhead(abs, kb); err != nil && f.opts.Log != nil {
			f.opts.Log.WithError(err).Warn("Cannot raise the readahead of the store mount")
		}
	}
	return s, nil
}

// nodeFSOptions are the go-fuse options of the filesystem.
func (f *filesystem) nodeFSOptions() *fs.Options {
	opts := f.opts
	timeout := opts.CacheTimeout
	logger := log.New(io.Discard, "", 0)
	if opts.Debug && opts.Log != nil {
		logger = log.New(debugWriter{opts.Log}, "", 0)
	}
	mo := fuse.MountOptions{
		AllowOther:               !opts.SingleUser,
		FsName:                   "lazypull",
		Name:                     "lazypull",
		MaxWrite:                 opts.MaxRead,
		MaxReadAhead:             opts.MaxRead,
		MaxBackground:            opts.MaxBackground,
		DirectMount:              true,
		EnableSymlinkCaching:     true,
		ExplicitDataCacheControl: true,
		Logger:                   logger,
		Debug:                    opts.Debug,
		PanicHandler:             panicHandler(opts.Log),
	}
	if !opts.SkipPermissionChecks {
		mo.Options = append(mo.Options, "default_permissions")
	}
	return &fs.Options{
		MountOptions:    mo,
		EntryTimeout:    &timeout,
		AttrTimeout:     &timeout,
		NullPermissions: true, // mode 0000 (whiteouts) is real
		RootStableAttr:  &fs.StableAttr{Ino: rootIno},
		Logger:          logger,
	}
}

// debugWriter turns go-fuse's log lines into debug messages.
type debugWriter struct{ log *logrus.Entry }

func (w debugWriter) Write(p []byte) (int, error) {
	w.log.Debug(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// Mountpoint returns the absolute path the filesystem is mounted at.
func (s *Server) Mountpoint() string { return s.mountpoint }

// Unmount unmounts the filesystem and stops serving it. It fails (and the
// filesystem stays mounted) while the mount is busy, e.g. used as an
// overlay lower layer by a running container.
func (s *Server) Unmount() error {
	if err := s.srv.Unmount(); err != nil {
		return fmt.Errorf("alsfs: unmount %s: %w", s.mountpoint, err)
	}
	s.closeOnce.Do(s.fs.close)
	return nil
}

// Wait blocks until the filesystem is unmounted, by Unmount or from
// outside (umount, fusermount3 -u), and lookups in progress have stopped.
func (s *Server) Wait() {
	s.srv.Wait()
	s.closeOnce.Do(s.fs.close)
}

// Evict forgets the layer directory of (ref, layer) and tells the kernel
// to drop its cached entry, so that the next lookup asks the Resolver
// again. Files already open keep working; the Layer is released once the
// kernel has let go of the directory. It reports whether the layer was
// known. The Evict methods must not be called from inside a Resolver or
// LayerContent call (a FUSE request in flight).
func (s *Server) Evict(ref string, layer digest.Digest) bool {
	return len(s.evict(func(v *layerView) bool { return v.key == viewKey{ref, layer} })) > 0
}

// EvictLayer does what Evict does for every layer directory of layer (under
// every ref); it returns how many there were.
func (s *Server) EvictLayer(layer digest.Digest) int {
	return len(s.evict(func(v *layerView) bool { return v.key.digest == layer }))
}

// EvictRefs does what Evict does for every layer directory under an image
// ref that match accepts (e.g. an image whose credentials were withdrawn);
// it returns how many there were.
func (s *Server) EvictRefs(match func(ref string) bool) int {
	return len(s.evict(func(v *layerView) bool { return v.key.ref != "" && match(v.key.ref) }))
}

// EvictIdle does what Evict does for every layer directory not looked up
// for idle (see Options.LayerDirTimeout); it returns how many there were.
// Every Evict call also asks the kernel again to forget what was evicted
// before and is no longer in use.
func (s *Server) EvictIdle(idle time.Duration) int {
	cutoff := time.Now().Add(-idle)
	return len(s.evict(func(v *layerView) bool { return v.lastLookup.Before(cutoff) }))
}

func (s *Server) evict(match func(*layerView) bool) []viewKey {
	keys := s.fs.evict(match)
	// Evicted directories the kernel still holds: ask it to drop every
	// entry below them it has cached, so that it forgets them as soon as
	// nothing uses them (a container still running on one keeps what it
	// uses, and it keeps working).
	for _, in := range s.fs.zombieInodes() {
		dropEntries(in)
	}
	for _, k := range keys {
		parent := &s.root.Inode
		if k.ref != "" {
			if parent = parent.GetChild(encodeRef(k.ref)); parent == nil {
				continue
			}
		}
		parent.NotifyEntry(k.digest.String()) // ENOENT when the kernel had no entry
	}
	return keys
}

// dropEntries asks the kernel to drop the cached entries below directory
// in, deepest first (an entry in use is only unhashed; it keeps working).
// It must not run inside a FUSE request handler.
func dropEntries(in *fs.Inode) {
	for name, child := range in.Children() {
		if child.IsDir() {
			dropEntries(child)
		}
		in.NotifyEntry(name)
	}
}

// CleanStaleMount unmounts (lazily) a mount at mountpoint whose FUSE
// server is gone, as after a daemon crash: accessing it fails with
// ENOTCONN. It does nothing when nothing is mounted there and returns
// ErrMounted when a live filesystem is.
func CleanStaleMount(mountpoint string) error {
	abs, err := filepath.Abs(mountpoint)
	if err != nil {
		return fmt.Errorf("alsfs: clean mount %s: %w", mountpoint, err)
	}
	// Resolve symlinks of the parent: the mount point itself may be dead.
	if dir, err := filepath.EvalSymlinks(filepath.Dir(abs)); err == nil {
		abs = filepath.Join(dir, filepath.Base(abs))
	}
	for range 8 { // mounts may be stacked
		mounted, err := isMountPoint(abs)
		if err != nil {
			return fmt.Errorf("alsfs: clean mount %s: %w", abs, err)
		}
		if !mounted {
			return nil
		}
		if err = probe(abs); !errors.Is(err, unix.ENOTCONN) && !errors.Is(err, unix.ECONNABORTED) {
			return fmt.Errorf("%w: %s (stat: %v)", ErrMounted, abs, err)
		}
		if err := detach(abs); err != nil {
			return fmt.Errorf("alsfs: unmount stale mount %s: %w", abs, err)
		}
	}
	return fmt.Errorf("alsfs: clean mount %s: still mounted after 8 unmounts", abs)
}

// probe stats path, asking the filesystem even when the kernel has the
// attributes cached (they stay cached after the server died).
func probe(path string) error {
	var stx unix.Statx_t
	return unix.Statx(unix.AT_FDCWD, path, unix.AT_STATX_FORCE_SYNC, unix.STATX_BASIC_STATS, &stx)
}

// detach lazily unmounts path: umount2(MNT_DETACH) as root, else
// fusermount3 -u -z.
func detach(path string) error {
	err := unix.Unmount(path, unix.MNT_DETACH)
	if err == nil || !errors.Is(err, unix.EPERM) {
		return err
	}
	for _, bin := range []string{"fusermount3", "fusermount"} {
		out, cerr := exec.Command(bin, "-u", "-z", path).CombinedOutput()
		if cerr == nil {
			return nil
		}
		var ee *exec.Error
		if !errors.As(cerr, &ee) { // the binary ran and failed
			return fmt.Errorf("%s -u -z: %w: %s", bin, cerr, strings.TrimSpace(string(out)))
		}
	}
	return err
}

// isMountPoint reports whether /proc/self/mountinfo lists path as a mount
// point.
func isMountPoint(path string) (bool, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		// "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw"
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && unescapeMountinfo(fields[4]) == path {
			return true, nil
		}
	}
	return false, sc.Err()
}

// unescapeMountinfo decodes the octal escapes (\040 for space, ...) of a
// mountinfo path.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// setReadAhead writes read_ahead_kb of the mount's backing device info.
func setReadAhead(mountpoint string, kb int) error {
	var st unix.Stat_t
	if err := unix.Stat(mountpoint, &st); err != nil {
		return err
	}
	p := fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", unix.Major(st.Dev), unix.Minor(st.Dev))
	return os.WriteFile(p, []byte(strconv.Itoa(kb)), 0)
}
