package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/sirupsen/logrus"

	"github.com/lazypull/lazypull/layerstore"
	"github.com/lazypull/lazypull/layerstore/config"
)

// loadConfig reads the configuration named by --config, or the default file
// when it exists (for an unprivileged user, ~/.config/lazypull/config.toml
// first), over the embedded defaults of the user the command runs for.
func loadConfig(g *globalFlags) (config.Config, error) {
	cfg, err := config.Load(g.configPath)
	if err != nil {
		return cfg, err
	}
	if g.logLevel != "" {
		cfg.LogLevel = g.logLevel
	}
	return cfg, cfg.Validate()
}

// newLogger returns the daemon's logger at the configured level.
func newLogger(cfg config.Config) *logrus.Entry { return layerstore.NewLogger(cfg) }

// openStore opens the layer store with podman-compatible credentials.
func openStore(cfg config.Config, log *logrus.Entry) (*layerstore.Store, error) {
	return layerstore.OpenWithPodmanAuth(cfg, version, log)
}

// signalContext returns ctx cancelled by the first SIGINT or SIGTERM, so
// that a command working in podman's storage stops and shuts the store down
// (unmounting what containers/storage mounted, such as its private bind
// mount of GRAPHROOT/overlay) instead of dying with it mounted; a second
// signal, after stop, kills as usual.
func signalContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop() // the next signal has its default effect
	}()
	return ctx, stop
}
