package storagedrivertest

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containers/storage"

	"github.com/lazypull/lazypull/layerstore/config"
	storagedriver "github.com/lazypull/lazypull/storage_driver"
	"github.com/lazypull/lazypull/tests/testenv"
	"github.com/lazypull/lazypull/tests/testenv/fstree"
)

// driverConfig writes a layer store configuration for a daemon the storage
// driver starts itself, and returns its path and the configuration.
func driverConfig(t *testing.T, f *fixture) (string, config.Config) {
	t.Helper()
	dir := t.TempDir()
	cfg := daemonConfig(f.proxy.Host, f.reg.Host)
	cfg["root_dir"] = filepath.Join(dir, "root")
	cfg["mount_point"] = filepath.Join(dir, "store")
	path := writeTOML(t, filepath.Join(dir, "config.toml"), cfg)
	c, err := storagedriver.LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	return path, c
}

// stopDaemonOf stops, in t.Cleanup, the daemon a storage driver started
// with the configuration file cfgPath: the process whose arguments name
// that file, found by its id. Register it before the store, so that the
// store's images are removed first.
func stopDaemonOf(t *testing.T, cfgPath string, cfg config.Config) {
	t.Helper()
	t.Cleanup(func() {
		pids := processesWithArg(cfgPath)
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGTERM)
		}
		deadline := time.Now().Add(30 * time.Second)
		for _, pid := range pids {
			for syscall.Kill(pid, 0) == nil && time.Now().Before(deadline) {
				time.Sleep(50 * time.Millisecond)
			}
			if syscall.Kill(pid, 0) == nil {
				_ = syscall.Kill(pid, syscall.SIGKILL)
				t.Errorf("daemon %d did not stop within 30 s of SIGTERM", pid)
			}
		}
		if err := storagedriver.DaemonRunning(context.Background(), cfg); err == nil {
			t.Errorf("a daemon still serves %s", cfg.MountPoint)
		}
	})
}

// processesWithArg returns the ids of processes (other than this one) with
// arg among their arguments.
func processesWithArg(arg string) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		for _, a := range bytes.Split(b, []byte{0}) {
			if string(a) == arg {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

// TestPluginDriver is the path of a podman or buildah built with the
// plugin: the graph driver "lazypull" (registered by importing
// storage_driver) starts the layer store daemon itself by re-executing the
// current binary (here the test binary, through containers/storage's
// reexec), configures it as overlay's Additional Layer Store, the pull
// creates lazily served layers, and a layer is built on top of the image
// the way buildah commits one (container, write, diff, new layer, image).
func TestPluginDriver(t *testing.T) {
	f := newRegistryFixture(t, testImage())
	cfgPath, cfg := driverConfig(t, f)
	if err := storagedriver.DaemonRunning(context.Background(), cfg); err == nil {
		t.Fatal("a daemon already serves the test's mount point")
	}
	stopDaemonOf(t, cfgPath, cfg)
	store := newStore(t, storagedriver.DriverName, "lazypull.config="+cfgPath, "lazypull.start=reexec", "lazypull.start_timeout=60s")
	if err := storagedriver.DaemonRunning(context.Background(), cfg); err != nil {
		t.Fatalf("the driver did not start the daemon: %v\n%s", err, readFile(filepath.Join(cfg.RootDir, "daemon.log")))
	}
	if pids := processesWithArg(cfgPath); len(pids) != 1 {
		t.Errorf("%d daemon processes run with the test's configuration, want 1", len(pids))
	}
	status, err := store.Status()
	if err != nil {
		t.Fatal(err)
	}
	if got := statusValue(status, "Lazy pulling"); got != "serving "+cfg.MountPoint {
		t.Errorf("driver status %q = %q, want %q", "Lazy pulling", got, "serving "+cfg.MountPoint)
	}

	refStr := f.ref(testImage())
	img := f.images[refStr]
	res, err := storagedriver.Pull(context.Background(), store, mustRef(t, refStr), pullOptions(t))
	if err != nil {
		t.Fatalf("Pull: %v\n%s", err, readFile(filepath.Join(cfg.RootDir, "daemon.log")))
	}
	served := lazyLayers(img)
	for i, l := range res.Layers {
		lazy := l.Source == storagedriver.SourceLazy
		if lazy != served[img.Layers[i].Digest] {
			t.Errorf("layer %d: source %s, want lazy=%v", i, l.Source, served[img.Layers[i].Digest])
		}
		if target := diffLink(store.GraphRoot(), storagedriver.DriverName, l.ID); lazy && !strings.HasPrefix(target, cfg.MountPoint+"/") {
			t.Errorf("layer %d: diff is %q, want a symlink into %s", i, target, cfg.MountPoint)
		}
	}
	want, err := img.ExpectedTree()
	if err != nil {
		t.Fatal(err)
	}
	checkTree(t, want, imageTree(t, store, res.ImageID), "image pulled through the lazypull driver")

	// Build on top, as buildah does: a container, a change, a new layer and
	// image from its diff.
	built := buildOnTop(t, store, res.ImageID, "usr/lib/base/zoo/empty")
	got := imageTree(t, store, built)
	if n, ok := got["built.txt"]; !ok || n.SHA256 != sha256hex("built on a lazy image\n") {
		t.Errorf("built image: built.txt = %+v, want the new file", n)
	}
	if _, ok := got["usr/lib/base/zoo/empty"]; ok {
		t.Error("built image still has usr/lib/base/zoo/empty, which the new layer deletes")
	}
	checkTree(t, want, got, "built image vs the base image", // The deletion changes the directory's mtime.
		fstree.IgnorePaths("built.txt", "usr/lib/base/zoo/empty"), fstree.IgnoreMtimes(fstree.TypeDir))
}

// buildOnTop creates a container of image, writes built.txt and removes
// del in it, and commits its diff as a new layer and image; it returns the
// new image's ID.
func buildOnTop(t *testing.T, store storage.Store, image, del string) string {
	t.Helper()
	ctr, err := store.CreateContainer("", nil, image, "", "", nil)
	if err != nil {
		t.Fatalf("create container: %v", err)
	}
	mnt, err := store.Mount(ctr.ID, "")
	if err != nil {
		t.Fatalf("mount container: %v", err)
	}
	werr := os.WriteFile(filepath.Join(mnt, "built.txt"), []byte("built on a lazy image\n"), 0o644)
	rerr := os.Remove(filepath.Join(mnt, del))
	if _, err := store.Unmount(ctr.ID, false); err != nil {
		t.Fatalf("unmount container: %v", err)
	}
	if werr != nil || rerr != nil {
		t.Fatalf("change the container: %v, %v", werr, rerr)
	}
	// Diff holds a lock until closed that PutLayer needs: go through a file.
	diff, err := store.Diff("", ctr.LayerID, nil)
	if err != nil {
		t.Fatalf("diff: %v", err)
	}
	tmp, err := os.CreateTemp(t.TempDir(), "diff-")
	if err != nil {
		t.Fatal(err)
	}
	defer tmp.Close()
	_, err = io.Copy(tmp, diff)
	diff.Close()
	if err != nil {
		t.Fatalf("read diff: %v", err)
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	base, err := store.Image(image)
	if err != nil {
		t.Fatal(err)
	}
	layer, _, err := store.PutLayer("", base.TopLayer, nil, "", false, nil, tmp)
	if err != nil {
		t.Fatalf("commit layer: %v", err)
	}
	if err := store.DeleteContainer(ctr.ID); err != nil {
		t.Fatalf("delete container: %v", err)
	}
	newImage, err := store.CreateImage("", []string{"localhost/built:1"}, layer.ID, "", nil)
	if err != nil {
		t.Fatalf("create image: %v", err)
	}
	return newImage.ID
}

// TestPluginDriverOptions checks the driver's option handling: unknown
// lazypull.* options fail the store, and without a daemon (start=never) the
// driver is plain overlay that says why, and pulls are ordinary ones.
func TestPluginDriverOptions(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: a rootful containers/storage store with overlay")
	}
	dir := t.TempDir()
	_, err := storage.GetStore(storage.StoreOptions{
		GraphRoot: filepath.Join(dir, "root"), RunRoot: filepath.Join(dir, "run"),
		GraphDriverName: storagedriver.DriverName, GraphDriverOptions: []string{"lazypull.start=never", "lazypull.frobnicate=1"},
	})
	if !errors.Is(err, storagedriver.ErrBadOption) || !strings.Contains(err.Error(), "lazypull.frobnicate") {
		t.Errorf("GetStore with lazypull.frobnicate: %v, want ErrBadOption naming it", err)
	}

	f := newRegistryFixture(t, testImage())
	cfgPath, cfg := driverConfig(t, f)
	store := newStore(t, storagedriver.DriverName, "lazypull.config="+cfgPath, "lazypull.start=never")
	status, err := store.Status()
	if err != nil {
		t.Fatal(err)
	}
	if got := statusValue(status, "Lazy pulling"); !strings.HasPrefix(got, "off: ") || !strings.Contains(got, "never") {
		t.Errorf("driver status %q = %q, want off because of start=never", "Lazy pulling", got)
	}
	if err := storagedriver.DaemonRunning(context.Background(), cfg); err == nil {
		t.Error("a daemon runs although start=never")
	}
	res, err := storagedriver.Pull(context.Background(), store, mustRef(t, f.ref(testImage())), pullOptions(t))
	if err != nil {
		t.Fatalf("Pull without a daemon: %v", err)
	}
	for i, l := range res.Layers {
		if l.Source != storagedriver.SourcePulled {
			t.Errorf("layer %d: source %s without a daemon, want pulled", i, l.Source)
		}
	}
}

// TestPluginDriverStartsInstalledBinary starts the daemon through an
// installed `lazypull serve` (lazypull.start=binary) instead of reexec.
func TestPluginDriverStartsInstalledBinary(t *testing.T) {
	f := newRegistryFixture(t, testImage())
	cfgPath, cfg := driverConfig(t, f)
	stopDaemonOf(t, cfgPath, cfg)
	bin := testenv.LazypullBinary(t)
	store := newStore(t, storagedriver.DriverName, "lazypull.config="+cfgPath, "lazypull.start=binary", "lazypull.binary="+bin)
	if err := storagedriver.DaemonRunning(context.Background(), cfg); err != nil {
		t.Fatalf("the driver did not start %s serve: %v\n%s", bin, err, readFile(filepath.Join(cfg.RootDir, "daemon.log")))
	}
	pids := processesWithArg(cfgPath)
	if len(pids) != 1 {
		t.Fatalf("%d daemon processes run with the test's configuration, want 1", len(pids))
	}
	if exe, err := os.Readlink(filepath.Join("/proc", strconv.Itoa(pids[0]), "exe")); err != nil || exe != bin {
		t.Errorf("daemon executable %q (%v), want %s", exe, err, bin)
	}
	res, err := storagedriver.Pull(context.Background(), store, mustRef(t, f.ref(testImage())), pullOptions(t))
	if err != nil {
		t.Fatalf("Pull: %v", err)
	}
	if res.Layers[0].Source != storagedriver.SourceLazy {
		t.Errorf("base layer source %s, want lazy", res.Layers[0].Source)
	}
}

func statusValue(status [][2]string, key string) string {
	for _, kv := range status {
		if kv[0] == key {
			return kv[1]
		}
	}
	return ""
}

func readFile(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	return string(b)
}
