package layerstore

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// ErrExposed is returned (wrapped) when root_dir or the mount point lets
// users other than the daemon's in: everything the store keeps (spans of
// private images, indexes, the control socket) and serves (layers) would be
// theirs to read.
var ErrExposed = errors.New("layerstore: open to other users")

// privateDir makes sure dir exists as a directory of this process's user
// that no other user may enter: it creates it (and missing parents, 0755)
// with mode 0700 whatever the umask, and refuses an existing one with group
// or other permissions, or owned by another user, naming the fix. what names
// the directory in messages ("root_dir").
func privateDir(dir, what string) error {
	if parent := filepath.Dir(dir); parent != dir {
		if err := os.MkdirAll(parent, 0o755); err != nil {
			return fmt.Errorf("%s %s: %w", what, dir, err)
		}
	}
	switch err := os.Mkdir(dir, 0o700); {
	case err == nil:
		// The umask may have taken bits the owner needs; never more.
		if err := os.Chmod(dir, 0o700); err != nil {
			return fmt.Errorf("%s %s: %w", what, dir, err)
		}
		return nil
	case !errors.Is(err, fs.ErrExist):
		return fmt.Errorf("%s %s: %w", what, dir, err)
	}
	return checkPrivateDir(dir, what)
}

// checkPrivateDir refuses dir unless it is a directory owned by this
// process's user without group or other permissions.
func checkPrivateDir(dir, what string) error {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return fmt.Errorf("%s %s: %w", what, dir, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return fmt.Errorf("%s %s: not a directory", what, dir)
	}
	uid := os.Geteuid()
	if int(st.Uid) != uid {
		return fmt.Errorf("%w: %s %s belongs to uid %d, not to uid %d that runs lazypull: chown %d %s (or choose another %s)",
			ErrExposed, what, dir, st.Uid, uid, uid, dir, what)
	}
	if perm := st.Mode & 0o777; perm&0o077 != 0 {
		return fmt.Errorf("%w: %s %s has mode %04o, so other users may enter it and read what lazypull keeps and serves there: chmod 0700 %s",
			ErrExposed, what, dir, perm, dir)
	}
	return nil
}
