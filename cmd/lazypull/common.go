package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"

	"github.com/containers/image/v5/docker/reference"
	"github.com/sirupsen/logrus"

	"github.com/lazypull/lazypull/authbridge"
	"github.com/lazypull/lazypull/layerstore"
	"github.com/lazypull/lazypull/layerstore/config"
	"github.com/lazypull/lazypull/layerstore/control"
	"github.com/lazypull/lazypull/layerstore/remote"
)

// loadConfig reads the configuration named by --config, or the default file
// when it exists, over the embedded defaults.
func loadConfig(g *globalFlags) (config.Config, error) {
	path, explicit := g.configPath, g.configPath != ""
	if !explicit {
		path = config.DefaultPath
	}
	cfg, err := config.Load(path, explicit)
	if err != nil {
		return cfg, err
	}
	if g.logLevel != "" {
		cfg.LogLevel = g.logLevel
	}
	return cfg, cfg.Validate()
}

// newLogger returns the daemon's logger at the configured level.
func newLogger(cfg config.Config) *logrus.Entry {
	l := logrus.New()
	l.SetOutput(os.Stderr)
	l.SetFormatter(&logrus.TextFormatter{FullTimestamp: true})
	lvl, err := logrus.ParseLevel(cfg.LogLevel)
	if err != nil {
		lvl = logrus.InfoLevel
	}
	l.SetLevel(lvl)
	return logrus.NewEntry(l)
}

// newAuth creates the credential manager for a store rooted at cfg.RootDir.
// REGISTRY_AUTH_FILE is honoured like podman does when no auth_file is set.
func newAuth(cfg config.Config, log *logrus.Entry) (*authbridge.Manager, error) {
	authFile := cfg.Registry.AuthFile
	if authFile == "" {
		authFile = os.Getenv("REGISTRY_AUTH_FILE")
	}
	return authbridge.NewManager(authbridge.Options{
		AuthFile:          authFile,
		RegistriesConf:    cfg.Registry.RegistriesConf,
		RegistriesConfDir: registriesConfDir(cfg.Registry.RegistriesConf),
		HandoverFile:      filepath.Join(cfg.RootDir, "auth", "handover.json"),
		Logger:            log.WithField("component", "auth"),
	})
}

func registriesConfDir(conf string) string {
	if conf == "" {
		return ""
	}
	return conf + ".d"
}

// openStore opens the layer store with podman-compatible credentials.
func openStore(cfg config.Config, log *logrus.Entry) (*layerstore.Store, *authbridge.Manager, error) {
	if err := os.MkdirAll(cfg.RootDir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("root_dir: %w", err)
	}
	auth, err := newAuth(cfg, log)
	if err != nil {
		return nil, nil, err
	}
	st, err := layerstore.New(cfg, layerstore.Options{
		Version: version,
		Log:     log,
		Auth: func(ref reference.Named, actions []string, base http.RoundTripper) (remote.Auth, error) {
			return auth.Transport(ref, actions, base), nil
		},
		AuthStats: func() control.AuthStats {
			s := auth.Stats()
			return control.AuthStats{
				TokenFetches:       int64(s.TokenFetches),
				ProactiveRefreshes: int64(s.ProactiveRefreshes),
				Unauthorized:       int64(s.Unauthorized401),
				Retries:            int64(s.Retries),
				HandedOver:         s.HandoverEntries,
			}
		},
		Handover: func(_ context.Context, creds map[string]control.Credential) error {
			in := make(map[string]authbridge.Credential, len(creds))
			for ref, c := range creds {
				in[ref] = authbridge.Credential{Username: c.Username, Password: c.Password, IdentityToken: c.IdentityToken}
			}
			return auth.HandoverAll(in)
		},
	})
	if err != nil {
		auth.Close()
		return nil, nil, err
	}
	return st, auth, nil
}
