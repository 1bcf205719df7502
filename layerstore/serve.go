package layerstore

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/lazypull/lazypull/layerstore/alsfs"
	"github.com/lazypull/lazypull/layerstore/control"
)

// Serve runs the daemon until ctx is canceled: it cleans a stale mount left
// by a crashed daemon, mounts the store, serves the control socket and, when
// configured, Prometheus metrics; on cancellation it unmounts and closes.
// ready, when not nil, is called once the mount is live.
func (s *Store) Serve(ctx context.Context, ready func()) error {
	cfg := s.cfg
	log := s.log.WithField("mount_point", cfg.MountPoint)
	if err := os.MkdirAll(filepath.Dir(cfg.MountPoint), 0o700); err != nil {
		return fmt.Errorf("mount point: %w", err)
	}
	if err := os.Mkdir(cfg.MountPoint, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		// A stale FUSE mount answers ENOTCONN to mkdir; CleanStaleMount
		// below takes care of it.
		log.WithError(err).Debug("Creating the mount point")
	}
	if err := alsfs.CleanStaleMount(cfg.MountPoint); err != nil {
		return fmt.Errorf("mount point %s: %w", cfg.MountPoint, err)
	}
	// The directory under the mount: 0700 (created so whatever the umask),
	// refused when open to others.
	if err := privateDir(cfg.MountPoint, "mount_point"); err != nil {
		return err
	}
	opts := alsfs.Options{
		CacheTimeout: time.Duration(cfg.FUSE.AttrTimeout),
		SingleUser:   !cfg.FUSE.AllowOther,
		Log:          s.log.WithField("component", "fuse"),
		Debug:        cfg.FUSE.Debug,
		ReadAheadKB:  1024,
	}
	srv, err := alsfs.Mount(cfg.MountPoint, s, opts)
	if err != nil {
		return fmt.Errorf("mount %s: %w", cfg.MountPoint, explainMountError(err))
	}
	s.setEvicter(srv)
	ctl, err := control.Listen(cfg.Socket, s)
	if err != nil {
		_ = srv.Unmount()
		return err
	}
	var metricsSrv *http.Server
	metricsDone := make(chan struct{})
	if cfg.MetricsAddress != "" {
		ln, err := net.Listen("tcp", cfg.MetricsAddress)
		if err != nil {
			ctl.Close()
			_ = srv.Unmount()
			return fmt.Errorf("metrics_address: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", s.MetricsHandler())
		if cfg.Pprof {
			// Go's profiler, for field diagnosis, only when asked for:
			// anyone who reaches the address could burn CPU with it.
			mux.HandleFunc("/debug/pprof/", pprof.Index)
			mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
			mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
			mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		}
		metricsSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() {
			defer close(metricsDone)
			_ = metricsSrv.Serve(ln)
		}()
	} else {
		close(metricsDone)
	}
	log.WithFields(logrus.Fields{"socket": cfg.Socket, "root_dir": cfg.RootDir}).Info("lazypull store is serving")
	if ready != nil {
		ready()
	}

	unmounted := make(chan struct{})
	go func() {
		srv.Wait()
		close(unmounted)
	}()
	select {
	case <-ctx.Done():
		log.Info("Shutting down")
	case <-unmounted:
		log.Warn("The mount went away (unmounted from outside); shutting down")
	}
	var errs []error
	if metricsSrv != nil {
		_ = metricsSrv.Close()
	}
	<-metricsDone
	errs = append(errs, ctl.Close())
	select {
	case <-unmounted:
	default:
		if err := unmountRetry(srv); err != nil {
			errs = append(errs, err)
		}
	}
	errs = append(errs, s.Close())
	return errors.Join(errs...)
}

// unmountRetry unmounts, retrying while the mount is busy (a container
// still using a layer), and finally detaches it lazily.
func unmountRetry(srv *alsfs.Server) error {
	var err error
	for i := 0; i < 10; i++ {
		if err = srv.Unmount(); err == nil {
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	if derr := alsfs.CleanStaleMount(srv.Mountpoint()); derr == nil {
		return nil
	}
	return fmt.Errorf("unmount %s: %w (still in use by containers?)", srv.Mountpoint(), err)
}

// explainMountError adds what an unprivileged user usually lacks.
func explainMountError(err error) error {
	if os.Geteuid() == 0 {
		return err
	}
	if _, lerr := os.Stat("/dev/fuse"); lerr != nil {
		return fmt.Errorf("%w: /dev/fuse is missing (load the fuse module, or give the container the device)", err)
	}
	return fmt.Errorf("%w: a non-root daemon mounts through fusermount3 (package fuse3), which needs \"user_allow_other\" in /etc/fuse.conf when fuse.allow_other is on", err)
}
