package storagedriver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/containers/storage/pkg/reexec"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/lazypull/lazypull/layerstore"
	"github.com/lazypull/lazypull/layerstore/config"
	"github.com/lazypull/lazypull/layerstore/control"
)

// Names under which containers/storage's reexec runs this package's entry
// points in a re-executed copy of the current binary.
const (
	// ReexecServe runs the layer store daemon (like `lazypull serve`).
	ReexecServe = "lazypull-serve"
	// reexecSpawn starts the daemon detached and waits until it serves.
	reexecSpawn = "lazypull-spawn"
)

// Version is reported by a daemon started from this package (status and
// registry User-Agent); a program may set it at link time.
var Version = "plugin"

// fuseSuperMagic is the f_type statfs reports for FUSE file systems.
const fuseSuperMagic = 0x65735546

// DaemonRunning returns nil when a layer store daemon answers on cfg.Socket,
// serves cfg.MountPoint, and the mount is visible to this process (rootless
// podman works in a mount namespace of its own).
func DaemonRunning(ctx context.Context, cfg config.Config) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := control.NewClient(cfg.Socket).Status(ctx)
	if err != nil {
		return fmt.Errorf("%w: control socket %s: %w", ErrDaemonStart, cfg.Socket, err)
	}
	if filepath.Clean(st.MountPoint) != filepath.Clean(cfg.MountPoint) {
		return fmt.Errorf("%w: the daemon at %s serves %s, not %s", ErrDaemonStart, cfg.Socket, st.MountPoint, cfg.MountPoint)
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(cfg.MountPoint, &sfs); err != nil {
		return fmt.Errorf("%w: mount point %s: %w", ErrDaemonStart, cfg.MountPoint, err)
	}
	if sfs.Type != fuseSuperMagic {
		return fmt.Errorf("%w: %s is not mounted in this mount namespace", ErrDaemonStart, cfg.MountPoint)
	}
	return nil
}

// EnsureDaemon makes sure the layer store daemon for cfg runs, starting it
// as o.Start says when it does not: `lazypull serve` of an installed binary,
// or the current binary re-executed (ReexecServe). Concurrent callers (two
// podman commands) start one daemon: they serialize on a lock file under
// cfg.RootDir. The daemon is detached (own session) and outlives the caller.
func EnsureDaemon(ctx context.Context, cfg config.Config, o DriverOptions) error {
	if DaemonRunning(ctx, cfg) == nil {
		return nil
	}
	if o.Start == StartNever {
		return fmt.Errorf("%w: not running and %sstart=never", ErrDaemonStart, OptionPrefix)
	}
	if err := os.MkdirAll(cfg.RootDir, 0o700); err != nil {
		return fmt.Errorf("%w: root_dir: %w", ErrDaemonStart, err)
	}
	unlock, err := lockFile(filepath.Join(cfg.RootDir, "daemon-start.lock"))
	if err != nil {
		return fmt.Errorf("%w: %w", ErrDaemonStart, err)
	}
	defer unlock()
	if DaemonRunning(ctx, cfg) == nil {
		return nil // started by someone else meanwhile
	}
	args, err := spawnArgs(cfg, o)
	if err != nil {
		return err
	}
	sctx, cancel := context.WithTimeout(ctx, o.StartTimeout+10*time.Second)
	defer cancel()
	cmd := reexec.CommandContext(sctx, args...)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%w: %w: %s", ErrDaemonStart, err, strings.TrimSpace(stderr.String()))
	}
	return DaemonRunning(ctx, cfg)
}

// spawnArgs returns the arguments of the spawner (reexecSpawn) for o.
func spawnArgs(cfg config.Config, o DriverOptions) ([]string, error) {
	args := []string{reexecSpawn,
		"--socket", cfg.Socket, "--mount-point", cfg.MountPoint,
		"--log", filepath.Join(cfg.RootDir, "daemon.log"),
		"--timeout", o.StartTimeout.String(), "--"}
	mode := o.Start
	binary := o.Binary
	if mode == StartAuto || mode == StartBinary {
		if binary == "" {
			binary = "lazypull"
		}
		path, err := exec.LookPath(binary)
		switch {
		case err == nil:
			binary, mode = path, StartBinary
		case mode == StartBinary:
			return nil, fmt.Errorf("%w: %sbinary %q: %w", ErrDaemonStart, OptionPrefix, binary, err)
		default:
			mode = StartReexec
		}
	}
	// An installed `lazypull serve` picks its defaults by its own uid, which
	// is 0 inside rootless podman's user namespace: re-execute instead.
	if mode == StartBinary && o.Binary == "" && Rootless() && os.Geteuid() == 0 {
		mode = StartReexec
	}
	if mode == StartBinary {
		if o.MountPoint != "" {
			return nil, fmt.Errorf("%w: %smount_point works with %sstart=reexec only; set mount_point in the configuration file for `lazypull serve`", ErrBadOption, OptionPrefix, OptionPrefix)
		}
		args = append(args, binary)
		if o.ConfigPath != "" {
			args = append(args, "--config", o.ConfigPath)
		}
		return append(args, "serve"), nil
	}
	args = append(args, ReexecServe)
	if o.ConfigPath != "" {
		args = append(args, "--config", o.ConfigPath)
	}
	return append(args, "--mount-point", cfg.MountPoint), nil
}

func init() {
	reexec.Register(ReexecServe, func() { os.Exit(serveMain(os.Args[1:])) })
	reexec.Register(reexecSpawn, func() { os.Exit(spawnMain(os.Args[1:])) })
}

// serveMain is the daemon run by ReexecServe: [--config PATH]
// [--mount-point PATH].
func serveMain(args []string) int {
	var cfgPath, mnt string
	for len(args) >= 2 {
		switch args[0] {
		case "--config":
			cfgPath = args[1]
		case "--mount-point":
			mnt = args[1]
		default:
			fmt.Fprintf(os.Stderr, "%s: unknown argument %q\n", ReexecServe, args[0])
			return 2
		}
		args = args[2:]
	}
	if len(args) != 0 {
		fmt.Fprintf(os.Stderr, "%s: usage: %s [--config PATH] [--mount-point PATH]\n", ReexecServe, ReexecServe)
		return 2
	}
	cfg, err := LoadConfig(cfgPath)
	if err == nil && mnt != "" {
		cfg.MountPoint = mnt
		err = cfg.Validate()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", ReexecServe, err)
		return 1
	}
	ctx, stop := signalContext()
	defer stop()
	if err := RunDaemon(ctx, cfg, daemonLogger(cfg)); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", ReexecServe, err)
		return 1
	}
	return 0
}

// spawnMain starts the daemon given after "--" detached, with its output
// appended to --log, and waits until it serves --mount-point on --socket (exit
// 0) or fails or times out (exit 1, the log's tail on stderr). The daemon is
// then reparented to init, so nobody needs to reap it.
func spawnMain(args []string) int {
	flags := map[string]string{}
	for len(args) >= 2 && args[0] != "--" {
		flags[args[0]] = args[1]
		args = args[2:]
	}
	if len(args) < 2 || args[0] != "--" {
		fmt.Fprintf(os.Stderr, "%s: usage: %s --socket S --mount-point M --log L --timeout T -- COMMAND...\n", reexecSpawn, reexecSpawn)
		return 2
	}
	argv := args[1:]
	timeout, err := time.ParseDuration(flags["--timeout"])
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: --timeout: %v\n", reexecSpawn, err)
		return 2
	}
	logPath := flags["--log"]
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", reexecSpawn, err)
		return 1
	}
	defer logFile.Close()
	info, _ := logFile.Stat()
	logStart := int64(0)
	if info != nil {
		logStart = info.Size()
	}
	var cmd *exec.Cmd
	if argv[0] == ReexecServe {
		cmd = reexec.Command(argv...)
	} else {
		cmd = exec.Command(argv[0], argv[1:]...)
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "%s: start %s: %v\n", reexecSpawn, argv[0], err)
		return 1
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }() // ends with this process at the latest
	cfg := config.Config{Socket: flags["--socket"], MountPoint: flags["--mount-point"]}
	deadline := time.Now().Add(timeout)
	for {
		if DaemonRunning(context.Background(), cfg) == nil {
			return 0
		}
		select {
		case err := <-exited:
			fmt.Fprintf(os.Stderr, "the layer store daemon exited (%v): %s\n", err, logTail(logPath, logStart))
			return 1
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			fmt.Fprintf(os.Stderr, "the layer store daemon did not serve %s within %s: %s\n", cfg.MountPoint, timeout, logTail(logPath, logStart))
			return 1
		}
	}
}

// logTail returns what was appended to the log at path after offset, at
// most its last 2000 bytes.
func logTail(path string, offset int64) string {
	b, err := os.ReadFile(path)
	if err != nil || int64(len(b)) < offset {
		return "(no log)"
	}
	b = bytes.TrimSpace(b[offset:])
	if len(b) > 2000 {
		b = append([]byte("..."), b[len(b)-2000:]...)
	}
	if len(b) == 0 {
		return "(empty log)"
	}
	return string(b)
}

// RunDaemon runs the layer store daemon (what `lazypull serve` runs) with
// cfg until ctx is canceled: credentials found as podman finds them, plus
// those podman hands over, and the FUSE store mounted at cfg.MountPoint. It
// refuses to start, naming every missing piece, when Preflight fails.
func RunDaemon(ctx context.Context, cfg config.Config, log *logrus.Entry) error {
	return layerstore.Run(ctx, cfg, layerstore.RunOptions{Version: Version, Log: log})
}

func daemonLogger(cfg config.Config) *logrus.Entry {
	return layerstore.NewLogger(cfg).WithField("daemon", ReexecServe)
}

// lockFile takes an exclusive flock on path and returns its release.
func lockFile(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}
