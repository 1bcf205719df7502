package storagedrivertest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/containers/image/v5/docker/reference"
	"github.com/containers/image/v5/signature"
	"github.com/containers/image/v5/types"
	"github.com/containers/storage"
	"github.com/containers/storage/pkg/reexec"
	digest "github.com/opencontainers/go-digest"

	storagedriver "github.com/lazypull/lazypull/storage_driver"
	"github.com/lazypull/lazypull/tests/imagegen"
	"github.com/lazypull/lazypull/tests/testenv"
	"github.com/lazypull/lazypull/tests/testenv/fstree"
)

// TestMain lets containers/storage and the storage driver re-execute the
// test binary (layer extraction helpers, the daemon started by the driver).
func TestMain(m *testing.M) {
	if reexec.Init() {
		return
	}
	os.Exit(m.Run())
}

const mib = int64(1) << 20

// minLayerSize is the daemon's index.min_layer_size in these tests: every
// layer of testImage is above it except srv/small.
const minLayerSize = "1MiB"

// testImage is the image of these tests (about 22 MB): four layers above
// minLayerSize in three gzip flavours, one below it (pulled the ordinary
// way, between lazily served ones), busybox, every entry kind, whiteouts and
// opaque directories on top.
func testImage() imagegen.Options {
	return imagegen.Options{
		Name: "storagedriver", Seed: 21, MemberSize: 1 << 20,
		Layers: []imagegen.LayerSpec{
			{Compression: imagegen.GzipParallel, Dir: "usr/lib/base", Busybox: true, Zoo: true, SmallFiles: 300,
				Random: []int64{3 * mib}, Compressible: []int64{4 * mib}},
			{Compression: imagegen.GzipMultiMember, Dir: "usr/lib/app", SmallFiles: 200,
				Random: []int64{4 * mib}, Compressible: []int64{2 * mib}},
			{Compression: imagegen.Gzip, Dir: "opt/data", SmallFiles: 50, Random: []int64{5 * mib}},
			{Compression: imagegen.Gzip, Dir: "srv/small", SmallFiles: 20},
			{Compression: imagegen.GzipParallel, Dir: "var/top", Zoo: true, SmallFiles: 20,
				Random: []int64{mib + mib/2}, Whiteouts: 10, Opaque: 2, Replacements: 6},
		},
	}
}

// otherImage shares its first two layers with testImage (same seed, same
// specs) and has a top layer of its own.
func otherImage() imagegen.Options {
	o := testImage()
	o.Name = "storagedriver-other"
	o.Layers = append(o.Layers[:2:2], imagegen.LayerSpec{Compression: imagegen.Gzip, Dir: "opt/other", SmallFiles: 30,
		Random: []int64{2 * mib}})
	return o
}

func cachedImage(t testing.TB, o imagegen.Options) *imagegen.Image {
	t.Helper()
	img, err := imagegen.Cached(imagegen.CacheDir(), o)
	if err != nil {
		t.Fatalf("generate image %s: %v", o.Name, err)
	}
	return img
}

// fixture is a registry with the test images pushed and indexed (SOCI
// index in the registry, built on "another machine"), a counting proxy in
// front of it and a daemon reaching the registry through the proxy.
type fixture struct {
	reg    *testenv.Registry
	proxy  *testenv.CountingProxy
	daemon *testenv.Daemon
	images map[string]*imagegen.Image // by reference through the proxy
}

// daemonConfig is the layer store configuration of these tests (root_dir,
// mount point and socket are the harness's).
func daemonConfig(insecure ...string) map[string]any {
	return map[string]any{
		"registry": map[string]any{"insecure": insecure},
		"index":    map[string]any{"min_layer_size": minLayerSize, "span_size": "1MiB", "on_demand": "off"},
		"prefetch": map[string]any{"enabled": false}, "verification": map[string]any{"enabled": false},
	}
}

// newFixture pushes and indexes the images and starts the daemon. Create
// stores and podman harnesses after it: their cleanups then run first.
func newFixture(t testing.TB, opts ...imagegen.Options) *fixture {
	t.Helper()
	f := newRegistryFixture(t, opts...)
	f.daemon = testenv.StartDaemon(t, testenv.DaemonOptions{Config: daemonConfig(f.proxy.Host, f.reg.Host)})
	return f
}

// newRegistryFixture is newFixture without a daemon.
func newRegistryFixture(t testing.TB, opts ...imagegen.Options) *fixture {
	t.Helper()
	f := &fixture{images: map[string]*imagegen.Image{}}
	f.reg = testenv.StartRegistry(t, testenv.RegistryOptions{})
	f.proxy = testenv.StartCountingProxy(t, f.reg.URL)
	for _, o := range opts {
		img := cachedImage(t, o)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		_, err := testenv.Push(ctx, f.reg.URL, "lazypull/"+o.Name, "v1", img.Dir)
		cancel()
		if err != nil {
			t.Fatalf("push %s: %v", o.Name, err)
		}
		direct := f.reg.Ref("lazypull/"+o.Name, "v1")
		runLazypull(t, daemonConfig(f.reg.Host), "index", "--push", direct)
		f.images[f.proxy.Host+"/lazypull/"+o.Name+":v1"] = img
	}
	return f
}

// ref returns the reference (through the proxy) of the image made from o.
func (f *fixture) ref(o imagegen.Options) string {
	return f.proxy.Host + "/lazypull/" + o.Name + ":v1"
}

// runLazypull runs the lazypull binary under test with a configuration of
// its own (root_dir in a temporary directory).
func runLazypull(t testing.TB, cfg map[string]any, args ...string) string {
	t.Helper()
	dir := t.TempDir()
	cfg["root_dir"] = filepath.Join(dir, "root")
	path := writeTOML(t, filepath.Join(dir, "config.toml"), cfg)
	cmd := exec.Command(testenv.LazypullBinary(t), append([]string{"--config", path}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("lazypull %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func writeTOML(t testing.TB, path string, v any) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(tomlString(t, v)), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func tomlString(t testing.TB, v any) string {
	t.Helper()
	var buf bytes.Buffer
	if err := toml.NewEncoder(&buf).Encode(v); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}

// newStore opens a containers/storage store in a temporary directory with
// the given driver and options. Its cleanup removes every image and layer
// (so the daemon's mount is released) and shuts the store down.
func newStore(t testing.TB, driver string, options ...string) storage.Store {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: a rootful containers/storage store with overlay")
	}
	dir := t.TempDir()
	store, err := storage.GetStore(storage.StoreOptions{
		GraphRoot: filepath.Join(dir, "root"), RunRoot: filepath.Join(dir, "run"),
		GraphDriverName: driver, GraphDriverOptions: options,
	})
	if err != nil {
		t.Fatalf("GetStore(%s, %q): %v", driver, options, err)
	}
	t.Cleanup(func() { cleanStore(t, store) })
	return store
}

func cleanStore(t testing.TB, store storage.Store) {
	t.Helper()
	var errs []error
	if images, err := store.Images(); err == nil {
		for _, img := range images {
			if _, err := store.DeleteImage(img.ID, true); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if layers, err := store.Layers(); err == nil {
		for i := len(layers) - 1; i >= 0; i-- {
			if err := store.DeleteLayer(layers[i].ID); err != nil && !errors.Is(err, storage.ErrLayerUnknown) {
				errs = append(errs, err)
			}
		}
	}
	if _, err := store.Shutdown(true); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		t.Errorf("clean store %s: %v", store.GraphRoot(), err)
	}
}

// pullOptions are the options of an in-process pull from the test
// registry: plain HTTP, no system configuration, a policy accepting
// everything.
func pullOptions(t testing.TB) *storagedriver.Options {
	t.Helper()
	dir := t.TempDir()
	regConf := filepath.Join(dir, "registries.conf")
	if err := os.WriteFile(regConf, []byte("unqualified-search-registries = []\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	policy, err := signature.NewPolicyFromBytes([]byte(`{"default":[{"type":"insecureAcceptAnything"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	pc, err := signature.NewPolicyContext(policy)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pc.Destroy() })
	return &storagedriver.Options{
		SystemContext: &types.SystemContext{
			DockerInsecureSkipTLSVerify: types.OptionalBoolTrue,
			SystemRegistriesConfPath:    regConf,
			SystemRegistriesConfDirPath: filepath.Join(dir, "registries.conf.d"),
			AuthFilePath:                filepath.Join(dir, "auth.json"),
			BigFilesTemporaryDir:        dir,
		},
		PolicyContext: pc,
	}
}

func mustRef(t testing.TB, s string) reference.Named {
	t.Helper()
	ref, err := reference.ParseNormalizedNamed(s)
	if err != nil {
		t.Fatal(err)
	}
	return ref
}

// imageTree mounts image id of store read-only (as `podman image mount`
// does), snapshots it and unmounts it.
func imageTree(t testing.TB, store storage.Store, id string) fstree.Tree {
	t.Helper()
	mnt, err := store.MountImage(id, []string{"ro"}, "")
	if err != nil {
		t.Fatalf("mount image %s: %v", id, err)
	}
	defer func() {
		if _, err := store.UnmountImage(id, false); err != nil {
			t.Errorf("unmount image %s: %v", id, err)
		}
	}()
	tree, err := testenv.Snapshot(mnt)
	if err != nil {
		t.Fatalf("snapshot %s: %v", mnt, err)
	}
	return tree
}

// checkTree reports the differences between two trees (at most 20).
func checkTree(t testing.TB, want, got fstree.Tree, what string, opts ...fstree.DiffOption) {
	t.Helper()
	opts = append(opts, fstree.IgnoreXattrs("trusted.overlay.", "user.overlay.", "security.selinux"))
	diffs := testenv.Diff(want, got, opts...)
	if len(diffs) > 20 {
		diffs = append(diffs[:20], fmt.Sprintf("... and %d more", len(diffs)-20))
	}
	if len(diffs) > 0 {
		t.Errorf("%s: %d differences:\n%s", what, len(diffs), strings.Join(diffs, "\n"))
	}
}

// lazyLayers returns the digests of the layers of img the daemon serves
// (compressed size at least min_layer_size).
func lazyLayers(img *imagegen.Image) map[digest.Digest]bool {
	out := map[digest.Digest]bool{}
	for _, l := range img.Layers {
		if l.Size >= mib {
			out[l.Digest] = true
		}
	}
	return out
}

// diffLink returns where the diff directory of overlay layer id under
// graphRoot/driverDir points, or "" when it is a directory.
func diffLink(graphRoot, driverDir, id string) string {
	target, err := os.Readlink(filepath.Join(graphRoot, driverDir, id, "diff"))
	if err != nil {
		return ""
	}
	return target
}

func sha256hex(s string) string { return digest.FromString(s).Encoded() }

func mb(n int64) string { return fmt.Sprintf("%.2f MiB", float64(n)/float64(mib)) }
