package storagedriver

import (
	"github.com/containers/storage/pkg/unshare"

	"github.com/lazypull/lazypull/layerstore/config"
)

// Rootless reports whether this process acts for an unprivileged user, also
// inside rootless podman's user namespace where it runs as uid 0.
func Rootless() bool { return unshare.IsRootless() }

// LoadConfig reads the layer store configuration (see config.Load).
func LoadConfig(path string) (config.Config, error) { return config.Load(path) }

// DefaultConfigPath is the configuration file read when none is named (see
// config.DefaultPathFor).
func DefaultConfigPath(rootless bool) string { return config.DefaultPathFor(rootless) }
