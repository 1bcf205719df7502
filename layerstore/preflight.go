package layerstore

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/lazypull/lazypull/layerstore/config"
)

// ErrSetup is returned (wrapped, once per problem) by Preflight for what the
// machine or the user's session lacks to mount the store.
var ErrSetup = errors.New("layerstore: setup incomplete")

// FuseConf is the file whose user_allow_other line lets unprivileged users
// mount with allow_other through fusermount3.
const FuseConf = "/etc/fuse.conf"

// Preflight checks what mounting the store with cfg needs, before trying:
// /dev/fuse usable by this process; for an unprivileged daemon (mounting
// through fusermount3) fusermount3 itself, user_allow_other in
// /etc/fuse.conf when fuse.allow_other is on, and the session's runtime
// directory; root_dir private to this user (created 0700, refused when
// group or others may enter it) and the mount point's parent creatable. It reports
// every missing piece at once, each with what to do, and nil when nothing
// is missing.
func Preflight(cfg config.Config) error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrSetup}, args...)...))
	}
	if err := unix.Access("/dev/fuse", unix.R_OK|unix.W_OK); errors.Is(err, unix.ENOENT) {
		bad("/dev/fuse does not exist: load the fuse module (modprobe fuse); in a container, pass --device /dev/fuse")
	} else if err != nil {
		bad("/dev/fuse is not readable and writable by uid %d (%v): it must be mode 0666, as Debian's udev rule makes it (as root: chmod 0666 /dev/fuse)", os.Geteuid(), err)
	}
	if os.Geteuid() != 0 {
		fusermountChecks(cfg, bad)
	}
	if err := privateDir(cfg.RootDir, "root_dir"); err != nil {
		bad("%w", err)
	}
	if parent := filepath.Dir(cfg.MountPoint); parent != "/" {
		if err := os.MkdirAll(parent, 0o700); err != nil {
			hint := ""
			if strings.HasPrefix(cfg.MountPoint, "/run/user/") && os.Getenv("XDG_RUNTIME_DIR") == "" {
				hint = " (XDG_RUNTIME_DIR is not set: run in a login session, or `loginctl enable-linger USER`)"
			}
			bad("the mount point's directory %s cannot be created: %v%s", parent, err, hint)
		}
	}
	return errors.Join(errs...)
}

// fusermountChecks are the checks for a daemon that is not root (in any
// user namespace), which mounts through the setuid fusermount3.
func fusermountChecks(cfg config.Config, bad func(string, ...any)) {
	path, err := exec.LookPath("fusermount3")
	if err != nil {
		bad("fusermount3 is not installed (apt-get install fuse3)")
	} else if fi, err := os.Stat(path); err == nil && (fi.Mode()&os.ModeSetuid == 0 || fi.Sys().(*unix.Stat_t).Uid != 0) {
		bad("%s is not setuid root (reinstall fuse3)", path)
	}
	if cfg.FUSE.AllowOther {
		ok, err := fuseConfAllowsOther(FuseConf)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			bad("%s: %v", FuseConf, err)
		} else if !ok {
			bad("fuse.allow_other is on, but %s lacks the line user_allow_other: add it (as root), or set fuse.allow_other = false in the configuration (then only processes of uid %d can use the store). For rootless podman, rather run the store inside podman's user namespace: `podman unshare lazypull serve` (contrib/systemd/user/lazypull.service)", FuseConf, os.Geteuid())
		}
	}
	if os.Getenv("XDG_RUNTIME_DIR") == "" {
		bad("XDG_RUNTIME_DIR is not set: run in a login session, or `loginctl enable-linger USER` for services without one")
	}
}

// fuseConfAllowsOther reports whether the fuse.conf at path has an active
// user_allow_other line.
func fuseConfAllowsOther(path string) (bool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return false, err
	}
	s := bufio.NewScanner(bytes.NewReader(data))
	for s.Scan() {
		line := strings.TrimSpace(s.Text())
		if line == "user_allow_other" {
			return true, nil
		}
	}
	return false, s.Err()
}
