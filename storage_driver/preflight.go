package storagedriver

import (
	"github.com/lazypull/lazypull/layerstore"
	"github.com/lazypull/lazypull/layerstore/config"
)

// ErrSetup is returned (wrapped, once per problem) by Preflight for what the
// machine or the user's session lacks to mount the store.
var ErrSetup = layerstore.ErrSetup

// Preflight checks what mounting the store with cfg needs (see
// layerstore.Preflight).
func Preflight(cfg config.Config) error { return layerstore.Preflight(cfg) }
