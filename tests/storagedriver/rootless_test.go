package storagedrivertest

import (
	"context"
	"fmt"
	"os"
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
	u := testenv.NewRootlessUser(t, testenv.RootlessUserOptions{
		Prefix: "lzp", SubIDFloor: 400000, Tools: []string{"podman"},
		Binaries: map[string]string{"lazypull": testenv.LazypullBinary(t)},
	})
	lazypull := filepath.Join(u.Bin, "lazypull")

	mnt := filepath.Join(u.RunDir, "lazypull", "store")
	root := filepath.Join(u.Home, ".local", "share", "lazypull")
	cfg := daemonConfig(f.proxy.Host, f.reg.Host)
	cfg["root_dir"], cfg["mount_point"] = root, mnt
	cfgPath := u.WriteFile(".config/lazypull/config.toml", tomlString(t, cfg))
	u.WriteFile(".config/containers/storage.conf", fmt.Sprintf("[storage]\ndriver = \"overlay\"\n\n[storage.options]\nadditionallayerstores = [%q]\n", mnt+":ref"))
	u.WriteFile(".config/containers/registries.conf", fmt.Sprintf("unqualified-search-registries = []\n\n[[registry]]\nlocation = %q\ninsecure = true\n", f.proxy.Host))
	u.WriteFile(".config/containers/containers.conf", "[containers]\ndefault_ulimits = []\nnetns = \"none\"\n\n[engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n")

	// The daemon, as the user unit starts it: podman itself stats the mount
	// point when it starts, so it must exist first.
	u.MustRun("install", "-d", "-m", "0700", filepath.Dir(mnt), mnt)
	logPath := u.WriteFile("daemon.log", "")
	logFile, err := os.OpenFile(logPath, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	ctx, cancel := context.WithCancel(context.Background())
	daemon := u.Command(ctx, "podman", "unshare", lazypull, "--config", cfgPath, "serve")
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
		if _, err := u.Run("podman", "rmi", "--all", "--force"); err != nil {
			t.Errorf("rootless cleanup: %v", err)
		}
		// podman unshare does not pass signals on: stop the daemon itself.
		for _, pid := range processesWithArg(cfgPath) {
			if exe, _ := os.Readlink(filepath.Join("/proc", strconv.Itoa(pid), "exe")); exe == lazypull {
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
	id := u.MustRun(lazypull, "pull", "--quiet", "--identity", "toc", ref)
	t.Logf("rootless lazypull pull: image %s, %s of blobs fetched", id, mb(f.proxy.Stats().BlobBytes()))
	storage := filepath.Join(u.Home, ".local", "share", "containers", "storage")
	if n := countLinks(t, storage, mnt); n != len(lazyLayers(img)) {
		t.Errorf("after lazypull pull: %d layer diffs point into %s, want %d\n%s", n, mnt, len(lazyLayers(img)), readFile(logPath))
	}
	if b := readFile(filepath.Join(storage, "overlay-layers", "layers.json")); strings.Count(b, "toc-digest") != len(lazyLayers(img)) {
		t.Errorf("after lazypull pull: layers.json has %d TOC-identified layers, want %d", strings.Count(b, "toc-digest"), len(lazyLayers(img)))
	}
	u.MustRun("podman", "rmi", "--force", ref)

	// Stock rootless podman, through storage.conf.
	f.proxy.Reset()
	u.MustRun("podman", "pull", "--quiet", ref)
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
	out := u.MustRun("podman", args...)
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
