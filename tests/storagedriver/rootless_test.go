package storagedrivertest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lazypull/lazypull/layerstore/control"
	"github.com/lazypull/lazypull/tests/testenv"
	"github.com/lazypull/lazypull/tests/testenv/fstree"
)

// rootlessUser is an unprivileged user the test creates (and removes) with
// subordinate IDs, a runtime directory, and the podman and lazypull
// configuration a rootless user writes.
type rootlessUser struct {
	t                       *testing.T
	name, home, runDir, bin string
	uid, gid                int
}

// newRootlessUser creates the user. Its cleanup stops what the user still
// runs (by process id), removes the user and its directories, and restores
// the mode of /dev/fuse.
func newRootlessUser(t *testing.T) *rootlessUser {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a user")
	}
	for _, c := range []string{"useradd", "usermod", "userdel", "runuser", "newuidmap", "newgidmap", "podman"} {
		if _, err := exec.LookPath(c); err != nil {
			t.Skipf("needs %s (apt-get install passwd util-linux uidmap podman): %v", c, err)
		}
	}
	name := fmt.Sprintf("lzp%d", os.Getpid()%100000)
	start, err := testenv.FreeSubIDs(400000)
	if err != nil {
		t.Fatal(err)
	}
	mustRun(t, "useradd", "-m", "-s", "/bin/sh", name)
	u := &rootlessUser{t: t, name: name}
	t.Cleanup(u.remove)
	r := fmt.Sprintf("%d-%d", start, start+65535)
	mustRun(t, "usermod", "--add-subuids", r, "--add-subgids", r, name)
	pw, err := user.Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	u.uid, _ = strconv.Atoi(pw.Uid)
	u.gid, _ = strconv.Atoi(pw.Gid)
	u.home = pw.HomeDir
	// What logind does at login: the user's runtime directory.
	u.runDir = filepath.Join("/run/user", pw.Uid)
	if err := os.MkdirAll(u.runDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(u.runDir, u.uid, u.gid); err != nil {
		t.Fatal(err)
	}
	// What Debian's udev rule does: /dev/fuse usable by every user.
	if fi, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("needs /dev/fuse: %v", err)
	} else if mode := fi.Mode().Perm(); mode&0o006 != 0o006 {
		if err := os.Chmod("/dev/fuse", 0o666); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = os.Chmod("/dev/fuse", mode) })
	}
	// The binary under test, where the user can run it.
	dir, err := os.MkdirTemp("", "lzp-rootless-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	u.bin = filepath.Join(dir, "lazypull")
	if err := testenv.CopyFile(testenv.LazypullBinary(t), u.bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return u
}

func mustRun(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// command returns a command run as the user, in its home, with the
// environment of a login session.
func (u *rootlessUser) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "runuser", append([]string{"-u", u.name, "--", "env", "-i",
		"HOME=" + u.home, "USER=" + u.name, "LOGNAME=" + u.name, "XDG_RUNTIME_DIR=" + u.runDir,
		"PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", name}, args...)...)
	cmd.Dir = u.home
	return cmd
}

// run runs a command as the user and returns its stdout.
func (u *rootlessUser) run(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := u.command(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s %s (as %s): %w: %s", name, strings.Join(args, " "), u.name, err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(stdout.String()), nil
}

func (u *rootlessUser) mustRun(name string, args ...string) string {
	u.t.Helper()
	out, err := u.run(name, args...)
	if err != nil {
		u.t.Fatal(err)
	}
	return out
}

// writeFile writes a file of the user's.
func (u *rootlessUser) writeFile(rel, content string) string {
	u.t.Helper()
	path := filepath.Join(u.home, rel)
	for d := filepath.Dir(path); d != u.home && d != "/"; d = filepath.Dir(d) {
		defer os.Chown(d, u.uid, u.gid) //nolint:errcheck // best effort, checked by the user's commands
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		u.t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		u.t.Fatal(err)
	}
	if err := os.Chown(path, u.uid, u.gid); err != nil {
		u.t.Fatal(err)
	}
	return path
}

// processes returns the ids of the user's processes.
func (u *rootlessUser) processes() []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		var st syscall.Stat_t
		if syscall.Stat(filepath.Join("/proc", e.Name()), &st) == nil && int(st.Uid) == u.uid {
			pids = append(pids, pid)
		}
	}
	return pids
}

// remove ends what the user still runs (podman's pause process, a daemon
// left by a failed test), then removes the user, its home and runtime
// directory.
func (u *rootlessUser) remove() {
	if u.uid != 0 {
		for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
			pids := u.processes()
			for _, pid := range pids {
				_ = syscall.Kill(pid, sig)
			}
			for i := 0; i < 100 && len(u.processes()) > 0; i++ {
				time.Sleep(50 * time.Millisecond)
			}
		}
	}
	if out, err := exec.Command("userdel", "-r", u.name).CombinedOutput(); err != nil && !strings.Contains(string(out), "mail spool") {
		u.t.Errorf("userdel %s: %v\n%s", u.name, err, out)
	}
	if u.runDir != "" {
		_ = os.RemoveAll(u.runDir)
	}
}

// TestRootlessPodman runs the layer store as an unprivileged user, the way
// contrib/systemd/user/lazypull.service does (`podman unshare lazypull
// serve`: inside podman's user namespace, so that files are owned by the
// user's mapped IDs and the mount is where podman's mount namespace sees it;
// state under ~/.local/share, mount under $XDG_RUNTIME_DIR), and checks that
// `lazypull pull` (for podman >= 5) and rootless stock podman 4.3.1 pull
// the indexed image lazily, and that a rootless container reads it exactly.
func TestRootlessPodman(t *testing.T) {
	f := newRegistryFixture(t, testImage())
	ref := f.ref(testImage())
	img := f.images[ref]
	u := newRootlessUser(t)

	mnt := filepath.Join(u.runDir, "lazypull", "store")
	root := filepath.Join(u.home, ".local", "share", "lazypull")
	cfg := daemonConfig(f.proxy.Host, f.reg.Host)
	cfg["root_dir"], cfg["mount_point"] = root, mnt
	cfgPath := u.writeFile(".config/lazypull/config.toml", tomlString(t, cfg))
	u.writeFile(".config/containers/storage.conf", fmt.Sprintf("[storage]\ndriver = \"overlay\"\n\n[storage.options]\nadditionallayerstores = [%q]\n", mnt+":ref"))
	u.writeFile(".config/containers/registries.conf", fmt.Sprintf("unqualified-search-registries = []\n\n[[registry]]\nlocation = %q\ninsecure = true\n", f.proxy.Host))
	u.writeFile(".config/containers/containers.conf", "[containers]\ndefault_ulimits = []\nnetns = \"none\"\n\n[engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n")

	// The daemon, as the user unit starts it: podman itself stats the mount
	// point when it starts, so it must exist first.
	u.mustRun("install", "-d", "-m", "0700", filepath.Dir(mnt), mnt)
	logPath := u.writeFile("daemon.log", "")
	logFile, err := os.OpenFile(logPath, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	ctx, cancel := context.WithCancel(context.Background())
	daemon := u.command(ctx, "podman", "unshare", u.bin, "--config", cfgPath, "serve")
	daemon.Stdout, daemon.Stderr = logFile, logFile
	daemon.Cancel = func() error { return daemon.Process.Signal(syscall.SIGTERM) }
	daemon.WaitDelay = 30 * time.Second
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() { // ends when the daemon does; the cleanup below waits for it
		waitErr = daemon.Wait()
		close(exited)
	}()
	t.Cleanup(func() { // after the images are removed (registered later, run earlier)
		if _, err := u.run("podman", "rmi", "--all", "--force"); err != nil {
			t.Errorf("rootless cleanup: %v", err)
		}
		// podman unshare does not pass signals on: stop the daemon itself.
		for _, pid := range processesWithArg(cfgPath) {
			if exe, _ := os.Readlink(filepath.Join("/proc", strconv.Itoa(pid), "exe")); exe == u.bin {
				_ = syscall.Kill(pid, syscall.SIGTERM)
			}
		}
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			cancel()
			t.Errorf("the rootless daemon did not stop within 30 s")
			<-exited
		}
		cancel()
	})
	socket := filepath.Join(root, "lazypull.sock")
	if err := waitForSocket(socket, exited); err != nil {
		t.Fatalf("rootless daemon: %v (exit: %v)\n%s", err, waitErr, readFile(logPath))
	}

	// lazypull pull (podman >= 5's path): it continues in podman's user
	// namespace by itself.
	f.proxy.Reset()
	id := u.mustRun(u.bin, "pull", "--quiet", "--identity", "toc", ref)
	t.Logf("rootless lazypull pull: image %s, %s of blobs fetched", id, mb(f.proxy.Stats().BlobBytes()))
	storage := filepath.Join(u.home, ".local", "share", "containers", "storage")
	if n := countLinks(t, storage, mnt); n != len(lazyLayers(img)) {
		t.Errorf("after lazypull pull: %d layer diffs point into %s, want %d\n%s", n, mnt, len(lazyLayers(img)), readFile(logPath))
	}
	if b := readFile(filepath.Join(storage, "overlay-layers", "layers.json")); strings.Count(b, "toc-digest") != len(lazyLayers(img)) {
		t.Errorf("after lazypull pull: layers.json has %d TOC-identified layers, want %d", strings.Count(b, "toc-digest"), len(lazyLayers(img)))
	}
	u.mustRun("podman", "rmi", "--force", ref)

	// Stock rootless podman, through storage.conf.
	f.proxy.Reset()
	u.mustRun("podman", "pull", "--quiet", ref)
	pulled := f.proxy.Stats()
	for _, l := range img.Layers {
		if lazyLayers(img)[l.Digest] && pulled.ByDigest[l.Digest.String()].Bytes > 64<<10 {
			t.Errorf("rootless podman pull fetched %d bytes of lazily served layer %s", pulled.ByDigest[l.Digest.String()].Bytes, l.Digest)
		}
	}
	if n := countLinks(t, storage, mnt); n != len(lazyLayers(img)) {
		t.Errorf("after podman pull: %d layer diffs point into %s, want %d", n, mnt, len(lazyLayers(img)))
	}
	want, err := img.ExpectedTree()
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, p := range want.Paths() {
		if n := want[p]; n.Type == fstree.TypeFile && n.Size > 0 && n.Mode&0o004 != 0 && (strings.HasPrefix(p, "usr/lib/app/") || strings.HasPrefix(p, "opt/data/")) && len(paths) < 6 {
			paths = append(paths, p)
		}
	}
	args := []string{"run", "--rm", ref, "/bin/sh", "-c", "sha256sum /" + strings.Join(paths, " /") + " && echo written > /etc/new-file && cat /etc/new-file"}
	out := u.mustRun("podman", args...)
	for _, p := range paths {
		if !strings.Contains(out, want[p].SHA256+"  /"+p) {
			t.Errorf("rootless container: sha256 of %s not %s in %q", p, want[p].SHA256, out)
		}
	}
	if !strings.HasSuffix(out, "written") {
		t.Errorf("rootless container could not write on top of the lazy layers: %q", out)
	}
	st, err := control.NewClient(socket).Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.Reads.Errors != 0 || len(st.Layers) != len(lazyLayers(img)) {
		t.Errorf("rootless daemon: %d layers served, %d read errors; want %d and 0", len(st.Layers), st.Reads.Errors, len(lazyLayers(img)))
	}
}

// countLinks counts the overlay layer diffs under storage that are symlinks
// into mnt.
func countLinks(t *testing.T, storage, mnt string) int {
	t.Helper()
	diffs, err := filepath.Glob(filepath.Join(storage, "overlay", "*", "diff"))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, d := range diffs {
		if target, err := os.Readlink(d); err == nil && strings.HasPrefix(target, mnt+"/") {
			n++
		}
	}
	return n
}

// waitForSocket waits until a daemon answers on socket, or exited reports
// that it ended.
func waitForSocket(socket string, exited <-chan struct{}) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := control.NewClient(socket).Status(ctx)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("exited (last: %v)", err)
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no answer within 60 s: %w", err)
		}
	}
}
