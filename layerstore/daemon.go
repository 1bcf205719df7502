package layerstore

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/containers/image/v5/docker/reference"
	"github.com/sirupsen/logrus"

	"github.com/lazypull/lazypull/authbridge"
	"github.com/lazypull/lazypull/layerstore/config"
	"github.com/lazypull/lazypull/layerstore/control"
	"github.com/lazypull/lazypull/layerstore/remote"
)

// NewLogger returns the daemon's logger: text with timestamps on stderr, at
// cfg.LogLevel.
func NewLogger(cfg config.Config) *logrus.Entry {
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

// OpenWithPodmanAuth opens the store with registry credentials exactly as
// podman finds them (authbridge: auth files, credential helpers; the
// REGISTRY_AUTH_FILE variable when registry.auth_file is unset, as podman
// maps it) plus the credentials podman hands over, kept in memory (and, with
// registry.handover_persist, for a short while in a 0600 file under
// root_dir). Closing the store closes the credential manager.
//
// root_dir is locked first: a second process on the same root_dir fails with
// ErrRootDirInUse before it touches anything there (the handover file
// included).
func OpenWithPodmanAuth(cfg config.Config, version string, log *logrus.Entry) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	lock, err := lockRootDir(cfg.RootDir)
	if err != nil {
		return nil, err
	}
	st, err := openWithPodmanAuth(cfg, version, log, lock)
	if err != nil {
		lock.release()
		return nil, err
	}
	return st, nil
}

func openWithPodmanAuth(cfg config.Config, version string, log *logrus.Entry, lock *rootLock) (*Store, error) {
	authFile := cfg.Registry.AuthFile
	if authFile == "" {
		authFile = os.Getenv("REGISTRY_AUTH_FILE")
	}
	confDir := ""
	if cfg.Registry.RegistriesConf != "" {
		confDir = cfg.Registry.RegistriesConf + ".d"
	}
	auth, err := authbridge.NewManager(authbridge.Options{
		AuthFile:           authFile,
		RegistriesConf:     cfg.Registry.RegistriesConf,
		RegistriesConfDir:  confDir,
		HandoverFile:       filepath.Join(cfg.RootDir, "auth", "handover.json"),
		HandoverPersist:    cfg.Registry.HandoverPersist,
		HandoverPersistTTL: time.Duration(cfg.Registry.HandoverPersistTTL),
		Logger:             log.WithField("component", "auth"),
	})
	if err != nil {
		return nil, err
	}
	st, err := newLocked(cfg, Options{
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
		HasCredentials: auth.HasCredentials,
		CredentialID:   auth.CredentialID,
		OnClose:        auth.Close,
	}, lock)
	if err != nil {
		auth.Close()
		return nil, err
	}
	return st, nil
}
