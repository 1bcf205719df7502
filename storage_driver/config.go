package storagedriver

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/containers/storage/pkg/unshare"

	"github.com/lazypull/lazypull/layerstore/config"
)

// Rootless reports whether this process acts for an unprivileged user, also
// inside rootless podman's user namespace where it runs as uid 0.
func Rootless() bool { return unshare.IsRootless() }

// LoadConfig reads the layer store configuration the way `lazypull serve`
// does, but with the defaults of the user this process acts for: rootless
// podman runs its storage code as uid 0 of a user namespace, where the
// system defaults (/var/lib/lazypull) would be wrong. path "" means, for
// an unprivileged user, $XDG_CONFIG_HOME/lazypull/config.toml when it
// exists, and otherwise (and for root) config.DefaultPath when it exists;
// without a file the defaults apply.
func LoadConfig(path string) (config.Config, error) {
	rootless := Rootless()
	cfg := config.DefaultFor(!rootless)
	if rootless && os.Geteuid() == 0 {
		// Inside the user namespace: the per-user paths must not fall back to
		// /run/user/0.
		fixUserPaths(&cfg)
	}
	explicit := path != ""
	if !explicit {
		path = DefaultConfigPath(rootless)
		if _, err := os.Stat(path); rootless && errors.Is(err, os.ErrNotExist) {
			path = config.DefaultPath // what `lazypull serve` reads by default
		}
	}
	data, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist) && !explicit:
		return cfg, cfg.Validate()
	case err != nil:
		return cfg, fmt.Errorf("lazypull config: %w", err)
	}
	if err := config.Parse(data, &cfg); err != nil {
		return cfg, fmt.Errorf("lazypull config %s: %w", path, err)
	}
	return cfg, cfg.Validate()
}

// DefaultConfigPath is the configuration file read when none is named:
// config.DefaultPath for root, $XDG_CONFIG_HOME/lazypull/config.toml
// (~/.config/lazypull/config.toml) for other users.
func DefaultConfigPath(rootless bool) string {
	if !rootless {
		return config.DefaultPath
	}
	dir := os.Getenv("XDG_CONFIG_HOME")
	if dir == "" {
		home, _ := os.UserHomeDir()
		dir = filepath.Join(home, ".config")
	}
	return filepath.Join(dir, "lazypull", "config.toml")
}

// fixUserPaths replaces a mount point under /run/user/0 (what the defaults
// give inside a user namespace without XDG_RUNTIME_DIR) with the user's.
func fixUserPaths(cfg *config.Config) {
	if os.Getenv("XDG_RUNTIME_DIR") != "" {
		return
	}
	uid := strconv.Itoa(unshare.GetRootlessUID())
	cfg.MountPoint = filepath.Join("/run/user", uid, "lazypull", "store")
}
