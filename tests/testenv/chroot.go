package testenv

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// DefaultTrixieDir is where the Debian 13 (trixie) root file system with
// stock podman 5 lives between test runs (contrib/dev/trixie-chroot.sh makes
// it; $LAZYPULL_TRIXIE overrides).
const DefaultTrixieDir = "/var/cache/lazypull-test/trixie"

// ErrNoChroot is returned when the podman 5 root file system cannot be made
// or mounted here.
var ErrNoChroot = errors.New("testenv: podman 5 chroot unavailable")

// TrixieDir returns the trixie root file system, making it first when it
// does not exist yet (contrib/dev/trixie-chroot.sh: debootstrap and apt,
// about 2.5 minutes once per machine; concurrent callers wait for one).
func TrixieDir() (string, error) {
	trixieOnce.Do(func() {
		dir := os.Getenv("LAZYPULL_TRIXIE")
		if dir == "" {
			dir = DefaultTrixieDir
		}
		script, err := repoFile("contrib/dev/trixie-chroot.sh")
		if err != nil {
			trixieErr = fmt.Errorf("%w: %w", ErrNoChroot, err)
			return
		}
		if out, err := exec.Command(script, dir).CombinedOutput(); err != nil {
			trixieErr = fmt.Errorf("%w: %s %s: %w\n%s", ErrNoChroot, script, dir, err, out)
			return
		}
		trixieDir = dir
	})
	return trixieDir, trixieErr
}

var (
	trixieOnce sync.Once
	trixieDir  string
	trixieErr  error
)

// repoFile returns the path of rel in the repository this package lives in.
func repoFile(rel string) (string, error) {
	_, self, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("cannot locate the repository")
	}
	p := filepath.Join(filepath.Dir(self), "..", "..", rel)
	if _, err := os.Stat(p); err != nil {
		return "", err
	}
	return p, nil
}

// Chroot runs programs of another root file system (stock podman 5 of
// Debian trixie) in this machine's mount namespace, sharing one directory
// with the host at the same path inside and outside:
//
//   - Root is a private bind mount of the root file system (a mount point,
//     as containers/storage's layer unpacking needs), with /proc, /sys,
//     /dev (FUSE included) and a /run of its own.
//   - Shared is a new directory on the host that is a shared mount; it is
//     bound at the same path inside, in the same peer group, so mounts made
//     on either side later (a layer store's FUSE mount, restarted) appear
//     on the other. Put everything both sides use under it (SharedDir):
//     podman's storage and configuration (NewPodman does), the layer
//     store's directory, build contexts.
//
// Programs inside see host paths unchanged; the host reaches mounts made
// inside (podman image mount) at HostPath.
type Chroot struct {
	// Root is where the root file system is mounted for this Chroot.
	Root string
	// Shared is the directory shared with the host at the same path.
	Shared string

	src    string // the root file system's directory
	inside string // Shared's mount point in src, removed by Close

	mu     sync.Mutex
	closed bool
}

// NewChroot mounts the trixie root file system for the test (making it
// first if needed) and unmounts it in t.Cleanup; create it before the layer
// store and the podman harness that use it, so that it is torn down after
// them. It skips the test when not root.
func NewChroot(t testing.TB) *Chroot {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the podman 5 chroot needs root (mounts)")
	}
	c, err := NewChrootHarness()
	if err != nil {
		t.Fatalf("NewChroot: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("chroot cleanup: %v", err)
		}
	})
	return c
}

// NewChrootHarness is NewChroot outside a test; the caller must Close it.
func NewChrootHarness() (*Chroot, error) {
	src, err := TrixieDir()
	if err != nil {
		return nil, err
	}
	root, err := os.MkdirTemp("/run", "lazypull-chroot-")
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNoChroot, err)
	}
	shared, err := os.MkdirTemp("", "lzp-shared-")
	if err != nil {
		os.Remove(root)
		return nil, fmt.Errorf("%w: %w", ErrNoChroot, err)
	}
	c := &Chroot{Root: root, Shared: shared, src: src}
	if err := c.mount(src); err != nil {
		return nil, errors.Join(fmt.Errorf("%w: %w", ErrNoChroot, err), c.Close())
	}
	return c, nil
}

func (c *Chroot) mount(src string) error {
	steps := []struct {
		src, dst, fstype string
		flags            uintptr
	}{
		{src, c.Root, "", unix.MS_BIND},
		{"", c.Root, "", unix.MS_PRIVATE | unix.MS_REC},
		{"proc", c.Root + "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC},
		{"/sys", c.Root + "/sys", "", unix.MS_BIND | unix.MS_REC},
		{"/dev", c.Root + "/dev", "", unix.MS_BIND | unix.MS_REC},
		{"tmpfs", c.Root + "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV},
		// The shared directory: a shared mount on the host, bound inside
		// into the same peer group.
		{c.Shared, c.Shared, "", unix.MS_BIND},
		{"", c.Shared, "", unix.MS_SHARED},
	}
	for _, s := range steps {
		if err := unix.Mount(s.src, s.dst, s.fstype, s.flags, ""); err != nil {
			return fmt.Errorf("mount %s on %s: %w", s.src, s.dst, err)
		}
	}
	inside := c.Root + c.Shared
	if err := os.MkdirAll(inside, 0o755); err != nil {
		return err
	}
	c.inside = filepath.Join(c.src, c.Shared)
	if err := unix.Mount(c.Shared, inside, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("mount %s on %s: %w", c.Shared, inside, err)
	}
	// /sys, /dev came along as private copies of the host's (rprivate
	// above applies before they exist): make sure nothing mounted under
	// them inside leaks out.
	for _, d := range []string{"/sys", "/dev"} {
		if err := unix.Mount("", c.Root+d, "", unix.MS_SLAVE|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("make %s a slave: %w", d, err)
		}
	}
	return nil
}

// SharedDir returns a new directory under Shared (the same path inside and
// outside), for a layer store, podman's storage or a build context.
func (c *Chroot) SharedDir(t testing.TB, name string) string {
	t.Helper()
	dir, err := os.MkdirTemp(c.Shared, name+"-")
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// HostPath returns where the host sees a path as programs inside the chroot
// see it (for mounts they made, e.g. `podman image mount`).
func (c *Chroot) HostPath(p string) string { return filepath.Join(c.Root, p) }

// Command returns the command name with args to run inside the root file
// system, with PATH set for it.
func (c *Chroot) Command(name string, args ...string) (string, []string) {
	return "/usr/sbin/chroot", append([]string{c.Root, "/usr/bin/env", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", name}, args...)
}

// Close unmounts everything mounted for the Chroot (lazily, deepest first)
// and removes its directories. Everything inside must have stopped.
func (c *Chroot) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	var errs []error
	for _, d := range []string{c.Root, c.Shared} {
		if err := unmountBelow(d); err != nil {
			errs = append(errs, err)
		}
	}
	if c.inside != "" {
		if err := os.Remove(c.inside); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := os.Remove(c.Root); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	if err := os.RemoveAll(c.Shared); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (c *Chroot) String() string {
	return fmt.Sprintf("chroot %s (shared %s)", strings.TrimSuffix(c.Root, "/"), c.Shared)
}
