package layerstore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/lazypull/lazypull/layerstore/config"
)

// RunOptions are what Run needs besides the configuration.
type RunOptions struct {
	// Version is reported in status and the registry User-Agent.
	Version string
	// Log receives the daemon's log; default NewLogger(cfg).
	Log *logrus.Entry
	// Ready, when set, is called once the mount is live.
	Ready func()
}

// Run is the daemon (`lazypull serve`, and the store the storage plugin
// starts): it checks what mounting needs (Preflight), applies the memory
// limit, opens the store with podman's credentials and serves it until ctx
// is canceled.
func Run(ctx context.Context, cfg config.Config, o RunOptions) error {
	if o.Log == nil {
		o.Log = NewLogger(cfg)
	}
	// Name every missing piece (FUSE device, fusermount3,
	// user_allow_other, directories) before trying to mount.
	if err := Preflight(cfg); err != nil {
		return err
	}
	if cfg.Cache.MemoryLimit > 0 {
		debug.SetMemoryLimit(int64(cfg.Cache.MemoryLimit))
	}
	st, err := OpenWithPodmanAuth(cfg, o.Version, o.Log)
	if err != nil {
		return err
	}
	return st.Serve(ctx, o.Ready)
}

// ErrRootDirInUse is returned when another lazypull process has the
// store's root_dir open.
var ErrRootDirInUse = errors.New("layerstore: root_dir is in use by another lazypull process")

// rootLock is the exclusive lock every lazypull process that opens a
// root_dir holds on <root_dir>/lock while it has it open; the file names
// the holder's pid.
type rootLock struct{ f *os.File }

// lockRootDir takes the lock of dir, failing at once when another process
// holds it.
// root_dir is created (0700) if need be, and refused when other users may
// enter it (privateDir).
func lockRootDir(dir string) (*rootLock, error) {
	if err := privateDir(dir, "root_dir"); err != nil {
		return nil, err
	}
	p := filepath.Join(dir, "lock")
	f, err := os.OpenFile(p, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock root_dir: %w", err)
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		holder := make([]byte, 32)
		n, _ := f.ReadAt(holder, 0)
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			pid := strings.TrimSpace(string(holder[:n]))
			return nil, fmt.Errorf("%w: %s (pid %s holds %s); stop it, or give this command another root_dir", ErrRootDirInUse, dir, pid, p)
		}
		return nil, fmt.Errorf("lock root_dir %s: %w", dir, err)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return &rootLock{f: f}, nil
}

func (l *rootLock) release() {
	if l != nil {
		l.f.Close()
	}
}
