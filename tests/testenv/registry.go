package testenv

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
)

// DefaultRegistryBinary is Debian's distribution registry (2.8.2).
const DefaultRegistryBinary = "/usr/bin/docker-registry"

// Errors of the registry harness.
var (
	// ErrRegistryStart is returned when a registry did not come up.
	ErrRegistryStart = errors.New("testenv: registry did not start")
	// ErrNoRegistryBinary is returned when the registry binary is missing.
	ErrNoRegistryBinary = errors.New("testenv: registry binary not found")
)

// RegistryOptions configures a registry. The zero value runs
// DefaultRegistryBinary with storage in a new temporary directory.
type RegistryOptions struct {
	// InProcess runs github.com/google/go-containerregistry/pkg/registry in
	// this process instead of a docker-registry process. It implements the
	// OCI referrers API but serves only single byte ranges.
	InProcess bool
	// Binary is the docker-registry executable; default
	// DefaultRegistryBinary.
	Binary string
	// Dir holds the registry's storage, configuration and log; default a new
	// temporary directory (t.TempDir() with StartRegistry), removed by Close
	// when NewRegistry created it.
	Dir string
	// TLS, when set, makes a docker-registry process serve https with a
	// certificate of this CA (see registryextra.go); ClientCerts, TLSHosts,
	// Users and ProxyRemoteURL are described there too.
	TLS            *TestCA
	TLSHosts       []string
	ClientCerts    bool
	Users          map[string]string
	ProxyRemoteURL string
}

// Registry is a running registry listening on 127.0.0.1.
type Registry struct {
	// Host is "127.0.0.1:<port>", the registry part of image references.
	Host string
	// URL is "http://127.0.0.1:<port>" ("https://" with RegistryOptions.TLS).
	URL string
	// HTTPClient talks to the registry: http.DefaultClient, or for a TLS
	// registry a client trusting its CA (with a client certificate when the
	// registry wants one).
	HTTPClient *http.Client
	// Dir holds the storage (Dir/storage), the configuration and, for a
	// docker-registry process, its log (Dir/registry.log).
	Dir string

	removeDir bool
	cmd       *exec.Cmd     // docker-registry process, or nil
	exited    chan struct{} // closed when cmd has been waited for
	server    *http.Server  // in-process registry, or nil
	serveDone chan struct{}
}

// StartRegistry starts a registry for the test and stops it in t.Cleanup. It
// skips the test when the docker-registry binary is missing.
func StartRegistry(t testing.TB, opts RegistryOptions) *Registry {
	t.Helper()
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	r, err := NewRegistry(opts)
	if errors.Is(err, ErrNoRegistryBinary) {
		t.Skipf("needs docker-registry (apt-get install docker-registry): %v", err)
	}
	if err != nil {
		t.Fatalf("StartRegistry: %v", err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("stop registry: %v", err)
		}
	})
	return r
}

// NewRegistry starts a registry; the caller must Close it. The
// docker-registry process gets SIGKILL as its parent-death signal (sent when
// the thread that started it ends, in practice when this process exits), so
// a test binary that times out or crashes leaves no registry behind.
func NewRegistry(opts RegistryOptions) (*Registry, error) {
	r := &Registry{Dir: opts.Dir, HTTPClient: http.DefaultClient}
	if r.Dir == "" {
		dir, err := os.MkdirTemp("", "lazypull-registry-")
		if err != nil {
			return nil, fmt.Errorf("testenv: registry dir: %w", err)
		}
		r.Dir, r.removeDir = dir, true
	}
	var err error
	if opts.InProcess {
		err = r.startInProcess()
	} else {
		err = r.startProcess(opts)
	}
	if err != nil {
		if r.removeDir {
			os.RemoveAll(r.Dir)
		}
		return nil, err
	}
	return r, nil
}

// Ref returns the reference of repo:tag in this registry.
func (r *Registry) Ref(repo, tag string) string {
	return r.Host + "/" + repo + ":" + tag
}

func (r *Registry) startInProcess() error {
	storage := filepath.Join(r.Dir, "storage")
	if err := os.MkdirAll(storage, 0o755); err != nil {
		return fmt.Errorf("testenv: %w", err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("%w: %w", ErrRegistryStart, err)
	}
	h := registry.New(
		registry.WithBlobHandler(registry.NewDiskBlobHandler(storage)),
		registry.WithReferrersSupport(true),
		registry.Logger(log.New(io.Discard, "", 0)),
	)
	r.server = &http.Server{Handler: h, ReadHeaderTimeout: 30 * time.Second, ErrorLog: log.New(io.Discard, "", 0)}
	r.serveDone = make(chan struct{})
	go func() {
		defer close(r.serveDone)
		_ = r.server.Serve(l) // returns http.ErrServerClosed on Close
	}()
	r.Host = l.Addr().String()
	r.URL = "http://" + r.Host
	return nil
}

const registryConfig = `version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: %s
  secret: lazypull-test-secret
`

func (r *Registry) startProcess(opts RegistryOptions) error {
	binary := opts.Binary
	if binary == "" {
		binary = DefaultRegistryBinary
	}
	if _, err := exec.LookPath(binary); err != nil {
		return fmt.Errorf("%w: %w", ErrNoRegistryBinary, err)
	}
	storage := filepath.Join(r.Dir, "storage")
	if err := os.MkdirAll(storage, 0o755); err != nil {
		return fmt.Errorf("testenv: %w", err)
	}
	extra, scheme, err := r.extraConfig(opts)
	if err != nil {
		return err
	}
	// The port is chosen by binding :0 and released before the registry binds
	// it; another process may take it meanwhile, so retry a few times.
	var lastErr error
	for range 5 {
		port, err := freePort()
		if err != nil {
			return fmt.Errorf("%w: %w", ErrRegistryStart, err)
		}
		host := fmt.Sprintf("127.0.0.1:%d", port)
		lastErr = r.tryStart(binary, storage, host, extra, scheme)
		if lastErr == nil {
			r.Host, r.URL = host, scheme+"://"+host
			return nil
		}
	}
	return lastErr
}

func (r *Registry) tryStart(binary, storage, host, extra, scheme string) error {
	cfg := filepath.Join(r.Dir, "config.yml")
	if err := os.WriteFile(cfg, append(fmt.Appendf(nil, registryConfig, storage, host), extra...), 0o644); err != nil {
		return fmt.Errorf("testenv: %w", err)
	}
	logPath := filepath.Join(r.Dir, "registry.log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("testenv: %w", err)
	}
	defer logFile.Close() // the child has its own descriptor
	cmd := exec.Command(binary, "serve", cfg)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("%w: %w", ErrRegistryStart, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait() // the exit status of a stopped registry is of no interest
		close(exited)
	}()
	r.cmd, r.exited = cmd, exited

	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	for {
		if registryAnswers(ctx, r.HTTPClient, scheme+"://"+host) {
			return nil
		}
		select {
		case <-exited:
			r.cmd = nil
			return fmt.Errorf("%w: exited early: %s", ErrRegistryStart, tail(logPath))
		case <-ctx.Done():
			r.stopProcess()
			return fmt.Errorf("%w: no answer on %s within 15s: %s", ErrRegistryStart, host, tail(logPath))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// registryAnswers reports whether GET /v2/ answers 200 or 401.
func registryAnswers(ctx context.Context, client *http.Client, url string) bool {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url+"/v2/", nil)
	if err != nil {
		return false
	}
	resp, err := client.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusUnauthorized
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// tail returns the last lines of a log file, for error messages.
func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(no log)"
	}
	s := strings.TrimSpace(string(b))
	if len(s) > 2000 {
		s = "..." + s[len(s)-2000:]
	}
	if s == "" {
		return "(empty log)"
	}
	return s
}

// stopProcess ends the registry's process group: SIGTERM, then SIGKILL after
// five seconds.
func (r *Registry) stopProcess() {
	if r.cmd == nil {
		return
	}
	pgid := r.cmd.Process.Pid
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-r.exited:
	case <-time.After(5 * time.Second):
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-r.exited
	}
	r.cmd = nil
}

// Close stops the registry and removes its directory when NewRegistry
// created it.
func (r *Registry) Close() error {
	var err error
	r.stopProcess()
	if r.server != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if e := r.server.Shutdown(ctx); e != nil {
			err = fmt.Errorf("testenv: stop in-process registry: %w", e)
			r.server.Close()
		}
		<-r.serveDone
		r.server = nil
	}
	if r.removeDir {
		if e := os.RemoveAll(r.Dir); e != nil && err == nil {
			err = fmt.Errorf("testenv: %w", e)
		}
	}
	return err
}
