package testenv

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultPodmanBinary is Debian's podman (4.3.1).
const DefaultPodmanBinary = "/usr/bin/podman"

// ErrPodman is returned (wrapped, with podman's stderr) when a podman
// command fails.
var ErrPodman = errors.New("testenv: podman failed")

// ErrNoPodman is returned when podman cannot run here (binary missing or not
// root).
var ErrNoPodman = errors.New("testenv: podman unavailable")

// PodmanOptions configures a Podman harness. The zero value gives an
// isolated podman that pulls from nowhere insecure.
type PodmanOptions struct {
	// Binary is the podman executable; default DefaultPodmanBinary.
	Binary string
	// Dir holds the storage (Dir/root, Dir/runroot), podman's tmp dir and the
	// test-owned configuration files; default t.TempDir() (NewPodman) or a
	// new temporary directory removed by Close (NewPodmanHarness).
	Dir string
	// InsecureRegistries lists "host:port" registries reached over plain
	// HTTP (written to the test-owned registries.conf).
	InsecureRegistries []string
	// StorageOpts are passed as --storage-opt to every command, for example
	// "overlay.additionallayerstore=/mnt/lazypull:ref". Note that
	// --storage-opt replaces every driver option of storage.conf.
	StorageOpts []string
	// Env is added to the environment of every command.
	Env []string
	// Timeout bounds each command; default 5 minutes (and never past the
	// test's deadline).
	Timeout time.Duration
	// StorageDriver is storage.conf's driver; default "overlay". A podman
	// built with lazypull's plugin uses "lazypull".
	StorageDriver string
	// Chroot, when set, runs Binary inside it (stock podman 5 of Debian
	// trixie): Dir and the run root are then made under Chroot.Shared, and
	// ImageMount returns host paths.
	Chroot *Chroot
}

// Podman runs stock podman with storage, run state, configuration
// (CONTAINERS_CONF, CONTAINERS_REGISTRIES_CONF, CONTAINERS_STORAGE_CONF) and
// locks of its own: runtime runc, no ulimits, cgroupfs, file event logger,
// no container networking, file locks.
type Podman struct {
	// Root and RunRoot are the storage's graph root and run root.
	Root    string
	RunRoot string
	// Dir holds the configuration and Root.
	Dir string
	// ShortDir holds RunRoot and podman's tmp dir: podman refuses run roots
	// longer than 50 bytes, so it is a new directory under os.TempDir(),
	// removed by Cleanup.
	ShortDir string

	binary      string
	chroot      *Chroot
	driver      string
	env         []string
	storageOpts []string
	timeout     time.Duration
	deadline    time.Time // the test's deadline, or zero
	removeDir   bool
}

// NewPodman returns a Podman harness for the test. Its Cleanup runs in
// t.Cleanup; since cleanups run in reverse order of registration, create
// the harness after the registry and any layer store it uses, so that
// podman's images and containers are removed before those go away. It skips
// the test when not root or podman is missing.
func NewPodman(t testing.TB, opts PodmanOptions) *Podman {
	t.Helper()
	if opts.Dir == "" && opts.Chroot != nil {
		opts.Dir = opts.Chroot.SharedDir(t, "podman") // removed with the Chroot, after Cleanup below
	}
	if opts.Dir == "" {
		opts.Dir = t.TempDir() // registered before Cleanup below, so removed after it
	}
	p, err := NewPodmanHarness(opts)
	if errors.Is(err, ErrNoPodman) {
		t.Skipf("%v", err)
	}
	if err != nil {
		t.Fatalf("NewPodman: %v", err)
	}
	if d, ok := t.(interface{ Deadline() (time.Time, bool) }); ok {
		if dl, ok := d.Deadline(); ok {
			p.deadline = dl.Add(-10 * time.Second) // leave time for cleanups
		}
	}
	t.Cleanup(func() {
		if err := p.Cleanup(); err != nil {
			t.Errorf("podman cleanup: %v", err)
		}
	})
	return p
}

// NewPodmanHarness sets up a Podman harness outside of a test; the caller
// must call Close.
func NewPodmanHarness(opts PodmanOptions) (*Podman, error) {
	binary := opts.Binary
	if binary == "" {
		binary = DefaultPodmanBinary
	}
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("%w: needs root (rootful podman with its own storage)", ErrNoPodman)
	}
	if c := opts.Chroot; c != nil {
		for _, b := range []string{binary, "/usr/bin/runc"} {
			if _, err := os.Stat(c.HostPath(b)); err != nil {
				return nil, fmt.Errorf("%w: %s in %s: %w", ErrNoPodman, b, c, err)
			}
		}
	} else {
		if _, err := exec.LookPath(binary); err != nil {
			return nil, fmt.Errorf("%w: %w (apt-get install podman runc)", ErrNoPodman, err)
		}
		if _, err := exec.LookPath("runc"); err != nil {
			return nil, fmt.Errorf("%w: %w (apt-get install runc)", ErrNoPodman, err)
		}
	}
	p := &Podman{Dir: opts.Dir, binary: binary, chroot: opts.Chroot, driver: opts.StorageDriver,
		storageOpts: opts.StorageOpts, timeout: opts.Timeout}
	if p.driver == "" {
		p.driver = "overlay"
	}
	if p.Dir == "" {
		dir, err := os.MkdirTemp("", "lazypull-podman-")
		if err != nil {
			return nil, fmt.Errorf("testenv: %w", err)
		}
		p.Dir, p.removeDir = dir, true
	}
	if p.timeout == 0 {
		p.timeout = 5 * time.Minute
	}
	shortParent := ""
	if p.chroot != nil {
		shortParent = p.chroot.Shared
	}
	short, err := os.MkdirTemp(shortParent, "lzp-")
	if err != nil {
		return nil, fmt.Errorf("testenv: %w", err)
	}
	p.ShortDir = short
	p.Root, p.RunRoot = filepath.Join(p.Dir, "root"), filepath.Join(short, "run")
	if err := p.writeConfig(opts.InsecureRegistries); err != nil {
		os.RemoveAll(short)
		return nil, err
	}
	p.env = append(append(os.Environ(),
		"CONTAINERS_CONF="+filepath.Join(p.Dir, "containers.conf"),
		"CONTAINERS_REGISTRIES_CONF="+filepath.Join(p.Dir, "registries.conf"),
		"CONTAINERS_STORAGE_CONF="+filepath.Join(p.Dir, "storage.conf"),
	), opts.Env...)
	return p, nil
}

func (p *Podman) writeConfig(insecure []string) error {
	tmp := filepath.Join(p.ShortDir, "tmp")
	for _, d := range []string{p.Root, p.RunRoot, tmp, filepath.Join(p.Dir, "networks")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("testenv: %w", err)
		}
	}
	containers := fmt.Sprintf(`[containers]
default_ulimits = []
netns = "none"
log_driver = "k8s-file"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = %q
tmp_dir = %q
lock_type = "file"

[network]
network_config_dir = %q
`, filepath.Join(p.Dir, "events.log"), tmp, filepath.Join(p.Dir, "networks"))
	var reg strings.Builder
	reg.WriteString("unqualified-search-registries = []\nshort-name-mode = \"disabled\"\n")
	for _, r := range insecure {
		fmt.Fprintf(&reg, "\n[[registry]]\nlocation = %q\ninsecure = true\n", r)
	}
	storage := fmt.Sprintf("[storage]\ndriver = %q\ngraphroot = %q\nrunroot = %q\n", p.driver, p.Root, p.RunRoot)
	for name, content := range map[string]string{
		"containers.conf": containers, "registries.conf": reg.String(), "storage.conf": storage,
	} {
		if err := os.WriteFile(filepath.Join(p.Dir, name), []byte(content), 0o644); err != nil {
			return fmt.Errorf("testenv: %w", err)
		}
	}
	return nil
}

// Run runs podman with args (after the harness's global flags) and returns
// its stdout and stderr; a failure's error includes stderr.
func (p *Podman) Run(args ...string) (stdout, stderr string, err error) {
	return p.RunContext(context.Background(), args...)
}

// RunContext is Run with a context; the command is killed when ctx ends,
// after the harness's timeout or shortly before the test's deadline.
func (p *Podman) RunContext(ctx context.Context, args ...string) (stdout, stderr string, err error) {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	if !p.deadline.IsZero() {
		var cancel2 context.CancelFunc
		ctx, cancel2 = context.WithDeadline(ctx, p.deadline)
		defer cancel2()
	}
	cmd := p.Command(ctx, args...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	if err != nil {
		err = fmt.Errorf("%w: podman %s: %w: %s", ErrPodman, strings.Join(args, " "), err, strings.TrimSpace(errOut.String()))
	}
	return out.String(), errOut.String(), err
}

// Command returns the podman command for args with the harness's global
// flags and environment, for callers that stream its output (benchmarks).
func (p *Podman) Command(ctx context.Context, args ...string) *exec.Cmd {
	global := []string{"--root", p.Root, "--runroot", p.RunRoot, "--tmpdir", filepath.Join(p.ShortDir, "tmp")}
	for _, o := range p.storageOpts {
		global = append(global, "--storage-opt", o)
	}
	name, argv := p.binary, append(global, args...)
	if p.chroot != nil {
		name, argv = p.chroot.Command(p.binary, argv...)
	}
	cmd := exec.CommandContext(ctx, name, argv...)
	cmd.Env = p.env
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 10 * time.Second
	return cmd
}

// Pull pulls ref (extra flags are added before it) and returns the image ID.
func (p *Podman) Pull(ref string, extra ...string) (string, error) {
	args := append(append([]string{"pull", "--quiet"}, extra...), ref)
	out, _, err := p.Run(args...)
	if err != nil {
		return "", err
	}
	lines := strings.Fields(out)
	if len(lines) == 0 {
		return "", fmt.Errorf("%w: pull %s printed no image ID", ErrPodman, ref)
	}
	return lines[len(lines)-1], nil
}

// RunContainer runs cmd in a new container of image (removed afterwards,
// without network) and returns its stdout and stderr.
func (p *Podman) RunContainer(image string, cmd ...string) (stdout, stderr string, err error) {
	return p.Run(append([]string{"run", "--rm", "--network", "none", image}, cmd...)...)
}

// ImageMount mounts the image read-only and returns the mount point.
func (p *Podman) ImageMount(image string) (string, error) {
	out, _, err := p.Run("image", "mount", image)
	if err != nil {
		return "", err
	}
	dir := strings.TrimSpace(out)
	if dir == "" {
		return "", fmt.Errorf("%w: image mount %s printed no path", ErrPodman, image)
	}
	if p.chroot != nil {
		dir = p.chroot.HostPath(dir)
	}
	return dir, nil
}

// ImageUnmount unmounts an image mounted by ImageMount.
func (p *Podman) ImageUnmount(image string) error {
	_, _, err := p.Run("image", "unmount", image)
	return err
}

// Cleanup removes every container and image of the harness, then unmounts
// whatever is still mounted under its directories (deepest first, lazily),
// so that the directories can be removed. It runs before anything the images
// depend on (a layer store, a registry) is torn down when NewPodman was
// created after those.
func (p *Podman) Cleanup() error {
	var errs []error
	steps := [][]string{
		{"image", "unmount", "--all", "--force"},
		{"rm", "--all", "--force", "--time", "0"},
		{"rmi", "--all", "--force"},
	}
	for _, s := range steps {
		if _, _, err := p.Run(s...); err != nil {
			errs = append(errs, err)
		}
	}
	for _, d := range []string{p.Dir, p.ShortDir} {
		if err := unmountBelow(d); err != nil {
			errs = append(errs, err)
		}
		if p.chroot != nil {
			if err := unmountBelow(p.chroot.HostPath(d)); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := os.RemoveAll(p.ShortDir); err != nil {
		errs = append(errs, fmt.Errorf("testenv: %w", err))
	}
	return errors.Join(errs...)
}

// Close runs Cleanup and removes the harness's directory if
// NewPodmanHarness created it.
func (p *Podman) Close() error {
	err := p.Cleanup()
	if p.removeDir {
		if e := os.RemoveAll(p.Dir); e != nil {
			err = errors.Join(err, fmt.Errorf("testenv: %w", e))
		}
	}
	return err
}

// unmountBelow lazily unmounts every mount point at or below dir, deepest
// first.
func unmountBelow(dir string) error {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return fmt.Errorf("testenv: %w", err)
	}
	defer f.Close()
	var points []string
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 1<<20), 1<<20)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			points = append(points, mp)
		}
	}
	if err := s.Err(); err != nil {
		return fmt.Errorf("testenv: read mountinfo: %w", err)
	}
	slices.SortFunc(points, func(a, b string) int { return len(b) - len(a) })
	var errs []error
	for _, mp := range points {
		if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("testenv: unmount %s: %w", mp, err))
		}
	}
	return errors.Join(errs...)
}

// unescapeMount undoes the octal escapes (\040 for space, ...) of mountinfo.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v byte
			ok := true
			for _, c := range []byte(s[i+1 : i+4]) {
				if c < '0' || c > '7' {
					ok = false
				}
				v = v*8 + c - '0'
			}
			if ok {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
