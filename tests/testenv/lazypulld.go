package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/lazypull/lazypull/layerstore/control"
)

// ErrNoLazypull is returned when the lazypull binary to test is not known.
var ErrNoLazypull = errors.New("testenv: lazypull binary not built")

// LazypullBinary returns the lazypull binary under test: $LAZYPULL_BIN
// (set by `make test-e2e`), or one built into dir with `go build` from the
// repository this package lives in.
func LazypullBinary(t testing.TB) string {
	t.Helper()
	if b := os.Getenv("LAZYPULL_BIN"); b != "" {
		return b
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "lazypull-bin-")
		if err != nil {
			buildErr = err
			return
		}
		out := filepath.Join(dir, "lazypull")
		cmd := exec.Command("go", "build", "-tags", "containers_image_openpgp exclude_graphdriver_btrfs exclude_graphdriver_devicemapper",
			"-o", out, "github.com/lazypull/lazypull/cmd/lazypull")
		if b, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("%w: go build: %v\n%s", ErrNoLazypull, err, b)
			return
		}
		builtBinary = out
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtBinary
}

var (
	buildOnce   sync.Once
	builtBinary string
	buildErr    error
)

// DaemonOptions configures a lazypull daemon under test.
type DaemonOptions struct {
	// Dir holds root_dir (Dir/root), the mount point (Dir/store), the config
	// and the log; default t.TempDir().
	Dir string
	// Config holds config keys over the test defaults, as TOML tables:
	// e.g. {"index": {"min_layer_size": "1MiB"}}. root_dir, mount_point,
	// socket and log_level are set by the harness.
	Config map[string]any
	// Env is added to the daemon's environment.
	Env []string
	// Root and MountPoint replace Dir/root and Dir/store (e.g. the
	// shipped unit's layout, the mount point inside root_dir).
	Root, MountPoint string
	// LogLevel is the daemon's log_level; default "debug" (benchmarks use
	// "info": debug logs every read).
	LogLevel string
}

// Daemon is a running `lazypull serve`.
type Daemon struct {
	Bin        string
	Dir        string
	Root       string
	MountPoint string
	Socket     string
	ConfigPath string
	LogPath    string

	env  []string
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// StartDaemon writes a config, starts `lazypull serve` and waits until its
// mount and control socket are live. It stops the daemon in t.Cleanup; as
// cleanups run last-registered first, start podman harnesses AFTER the
// daemon so their images are removed before the mount goes away.
func StartDaemon(t testing.TB, opts DaemonOptions) *Daemon {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the lazypull daemon under test mounts FUSE as root")
	}
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	d, err := NewDaemon(LazypullBinary(t), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Stop(); err != nil {
			t.Errorf("stop daemon: %v\n%s", err, d.LogTail(40))
		}
	})
	return d
}

// NewDaemon writes a config into opts.Dir (which must be set) and starts
// `lazypull serve` from bin; the caller must Stop it.
func NewDaemon(bin string, opts DaemonOptions) (*Daemon, error) {
	if opts.Dir == "" {
		return nil, errors.New("testenv: DaemonOptions.Dir is required")
	}
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, err
	}
	d := &Daemon{
		Bin:        bin,
		Dir:        opts.Dir,
		Root:       filepath.Join(opts.Dir, "root"),
		MountPoint: filepath.Join(opts.Dir, "store"),
		ConfigPath: filepath.Join(opts.Dir, "config.toml"),
		LogPath:    filepath.Join(opts.Dir, "daemon.log"),
		env:        opts.Env,
	}
	if opts.Root != "" {
		d.Root = opts.Root
	}
	if opts.MountPoint != "" {
		d.MountPoint = opts.MountPoint
	}
	d.Socket = filepath.Join(d.Root, "lazypull.sock")
	cfg := map[string]any{}
	for k, v := range opts.Config {
		cfg[k] = v
	}
	level := opts.LogLevel
	if level == "" {
		level = "debug"
	}
	cfg["root_dir"], cfg["mount_point"], cfg["socket"], cfg["log_level"] = d.Root, d.MountPoint, d.Socket, level
	var buf bytes.Buffer
	if err := toml.NewEncoder(&buf).Encode(cfg); err != nil {
		return nil, fmt.Errorf("daemon config: %w", err)
	}
	if err := os.WriteFile(d.ConfigPath, buf.Bytes(), 0o600); err != nil {
		return nil, err
	}
	if err := d.Start(); err != nil {
		return nil, err
	}
	return d, nil
}

// Start (re)starts the daemon process with the same configuration.
func (d *Daemon) Start() error {
	logf, err := os.OpenFile(d.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command(d.Bin, "--config", d.ConfigPath, "serve")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), d.env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start lazypull: %w", err)
	}
	d.cmd, d.done = cmd, make(chan struct{})
	go func() {
		d.err = cmd.Wait()
		logf.Close()
		close(d.done)
	}()
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := control.NewClient(d.Socket).Status(ctx)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-d.done:
			return fmt.Errorf("lazypull serve exited: %v\n%s", d.err, d.LogTail(40))
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("lazypull serve not ready after 60s: %v\n%s", err, d.LogTail(40))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Pid returns the daemon's process id.
func (d *Daemon) Pid() int { return d.cmd.Process.Pid }

// Stop sends SIGTERM and waits for a clean exit (the mount is gone after).
func (d *Daemon) Stop() error {
	if d.cmd == nil {
		return nil
	}
	select {
	case <-d.done:
		d.cmd = nil
		return nil // already gone (killed by the test)
	default:
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(30 * time.Second):
		// SIGQUIT makes the Go runtime write every goroutine's stack to
		// the log before exiting: the report names what shutdown waits on.
		_ = d.cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-d.done:
		case <-time.After(10 * time.Second):
			_ = d.cmd.Process.Kill()
			<-d.done
		}
		d.cmd = nil
		return fmt.Errorf("lazypull serve did not stop within 30s of SIGTERM; goroutines:\n%s", d.LogTail(400))
	}
	d.cmd = nil
	if d.err != nil {
		return fmt.Errorf("lazypull serve: %w", d.err)
	}
	return nil
}

// Kill kills the daemon with SIGKILL (a crash): the mount stays behind,
// stale, until the next Start cleans it.
func (d *Daemon) Kill() {
	if d.cmd == nil {
		return
	}
	_ = d.cmd.Process.Kill()
	<-d.done
	d.cmd = nil
}

// Status returns the daemon's status, failing the test when it cannot.
func (d *Daemon) Status(t testing.TB) *control.Status {
	t.Helper()
	st, err := d.StatusErr()
	if err != nil {
		t.Fatalf("lazypull status: %v", err)
	}
	return st
}

// StatusErr returns the daemon's status.
func (d *Daemon) StatusErr() (*control.Status, error) {
	return control.NewClient(d.Socket).Status(context.Background())
}

// Run runs a lazypull command against the daemon's configuration.
func (d *Daemon) Run(args ...string) (string, error) {
	cmd := exec.Command(d.Bin, append([]string{"--config", d.ConfigPath}, args...)...)
	cmd.Env = append(os.Environ(), d.env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("lazypull %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// PeakRSS returns the daemon's peak resident set size in bytes (VmHWM).
func (d *Daemon) PeakRSS() (int64, error) { return PeakRSS(d.Pid()) }

// PeakRSS returns the peak resident set size of process pid in bytes
// (VmHWM).
func PeakRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			var kb int64
			if _, err := fmt.Sscanf(strings.TrimSpace(rest), "%d kB", &kb); err != nil {
				return 0, err
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("no VmHWM in /proc/%d/status", pid)
}

// LogTail returns the last n lines of the daemon's log.
func (d *Daemon) LogTail(n int) string {
	b, _ := os.ReadFile(d.LogPath)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// ALSOption is the podman storage option that makes podman use the
// daemon's store.
func (d *Daemon) ALSOption() string {
	return "overlay.additionallayerstore=" + d.MountPoint + ":ref"
}
