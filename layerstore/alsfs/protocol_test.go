package alsfs

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// The host side of the protocol, step by step as containers/storage
// v1.43.0 (Debian's podman 4.3.1) does it in drivers/overlay/overlay.go
// and store.go.

// hostLookup is Driver.LookupAdditionalLayer plus the decoding of `info`
// in store.LookupAdditionalLayer: stat diff, info and blob of
// <root>/<base64(ref)>/<digest>, create `use`, read and decode `info`.
func hostLookup(root, ref string, d digest.Digest) (string, error) {
	target := path.Join(root, base64.StdEncoding.EncodeToString([]byte(ref)), d.String())
	for _, p := range []string{"diff", "info", "blob"} {
		if _, err := os.Stat(filepath.Join(target, p)); err != nil {
			return "", fmt.Errorf("failed to stat additional layer %q: %w", p, err)
		}
	}
	if err := hostNotifyUse(target); err != nil {
		return "", err
	}
	f, err := os.Open(filepath.Join(target, "info"))
	if err != nil {
		return "", err
	}
	defer f.Close()
	var layer struct {
		CompressedDigest digest.Digest `json:"compressed-diff-digest,omitempty"`
		CompressedSize   int64         `json:"compressed-size,omitempty"`
	}
	if err := json.NewDecoder(f).Decode(&layer); err != nil {
		return "", fmt.Errorf("decode info: %w", err)
	}
	return target, nil
}

// hostNotifyUse is notifyUseAdditionalLayer; the host only logs a warning
// where it returns an error.
func hostNotifyUse(target string) error {
	f, err := os.Create(path.Join(target, "use"))
	if os.IsNotExist(err) {
		return nil
	}
	if err == nil {
		f.Close()
	}
	return fmt.Errorf("unexpected error by Additional Layer Store during use (GC unsupported): %v", err)
}

// hostRelease is notifyReleaseAdditionalLayer.
func hostRelease(target string) error {
	err := unix.Rmdir(target)
	if os.IsNotExist(err) {
		return nil
	}
	return fmt.Errorf("unexpected error by Additional Layer Store during release (GC unsupported): %v", err)
}

// hostCreateAs is additionalLayer.CreateAs after Driver.Create: the
// layer's diff becomes a symlink into the store and `use` is created; the
// l/<link> symlink of Driver.Create points at the layer's diff.
func hostCreateAs(home, id, target string) (lower string, err error) {
	dir := filepath.Join(home, id)
	if err := os.MkdirAll(filepath.Join(home, "l"), 0o700); err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "additionallayer"), []byte(target), 0o644); err != nil {
		return "", err
	}
	if err := hostNotifyUse(target); err != nil {
		return "", err
	}
	if err := os.Symlink(filepath.Join(target, "diff"), filepath.Join(dir, "diff")); err != nil {
		return "", err
	}
	lower = filepath.Join(home, "l", "LINK"+id)
	return lower, os.Symlink(path.Join("..", id, "diff"), lower)
}

func TestProtocolHost143(t *testing.T) {
	d := layerDigest("main")
	layer := simpleLayer(t)
	r := newTestResolver()
	r.add(testRef, d, layer)
	_, mnt := mountTest(t, r, Options{})

	target, err := hostLookup(mnt, testRef, d)
	if err != nil {
		t.Fatalf("LookupAdditionalLayer: %v", err)
	}
	if _, uses, _ := r.counts(testRef, d); uses != 1 {
		t.Errorf("after the lookup: %d uses, want 1", uses)
	}
	home := t.TempDir()
	lower, err := hostCreateAs(home, "layer1", target)
	if err != nil {
		t.Fatalf("CreateAs: %v", err)
	}
	if _, uses, _ := r.counts(testRef, d); uses != 2 {
		t.Errorf("after CreateAs: %d uses, want 2", uses)
	}
	// Mounting: the lower is stat'ed through the symlinks, then
	// <lower>/../diff1, which lands in the store's layer directory.
	if st, err := os.Stat(lower); err != nil || !st.IsDir() {
		t.Errorf("stat lower %s = %v, %v; want a directory", lower, st, err)
	}
	if _, err := os.Stat(lower + "/../diff1"); !errors.Is(err, syscall.ENOENT) {
		t.Errorf("stat <lower>/../diff1 = %v, want ENOENT", err)
	}
	if data, err := os.ReadFile(filepath.Join(lower, "etc/hostname")); err != nil || string(data) != "box\n" {
		t.Errorf("read through the lower = %q, %v", data, err)
	}
	// Release of the lookup handle, then Driver.Remove of the layer.
	for i := 1; i <= 2; i++ {
		if err := hostRelease(target); err != nil {
			t.Fatalf("release %d: %v", i, err)
		}
		if _, _, releases := r.counts(testRef, d); releases != i {
			t.Errorf("after release %d: %d releases", i, releases)
		}
	}
	// The layer stays servable to the layers that point at it.
	if _, err := os.Stat(filepath.Join(lower, "etc")); err != nil {
		t.Errorf("stat through the lower after the releases: %v", err)
	}
	if lookups, _, _ := r.counts(testRef, d); lookups != 1 {
		t.Errorf("Resolver.Lookup called %d times, want 1", lookups)
	}
}

// TestProtocolUnknownLayer checks that every file the host stats is
// ENOENT for a layer the resolver cannot serve, and that it becomes
// servable as soon as the resolver can.
func TestProtocolUnknownLayer(t *testing.T) {
	d := layerDigest("later")
	r := newTestResolver()
	r.add(testRef, d, simpleLayer(t))
	r.setFail(testRef, d, errors.New("no index"))
	_, mnt := mountTest(t, r, Options{})
	target := filepath.Join(mnt, encodeRef(testRef), d.String())
	for _, name := range []string{"diff", "info", "blob", ""} {
		if _, err := os.Stat(filepath.Join(target, name)); !errors.Is(err, syscall.ENOENT) {
			t.Errorf("stat %s of an unknown layer = %v, want ENOENT", name, err)
		}
	}
	r.setFail(testRef, d, nil)
	if _, err := hostLookup(mnt, testRef, d); err != nil {
		t.Errorf("lookup once the resolver can serve the layer: %v (negative entry cached?)", err)
	}
}

// TestProtocolConcurrentImages pulls two images sharing a layer from 50
// goroutines each, all blocked in the resolver until every one started.
func TestProtocolConcurrentImages(t *testing.T) {
	d := layerDigest("shared")
	refs := []string{"reg.example/a:1", "reg.example/b:2"}
	r := newTestResolver()
	for _, ref := range refs {
		r.add(ref, d, simpleLayer(t))
	}
	r.gate = make(chan struct{})
	_, mnt := mountTest(t, r, Options{})

	const n = 50
	inos := make([][]uint64, len(refs))
	errs := make(chan error, len(refs)*n)
	var started, done sync.WaitGroup
	for i, ref := range refs {
		inos[i] = make([]uint64, n)
		for j := range n {
			started.Add(1)
			done.Add(1)
			go func() {
				defer done.Done()
				started.Done()
				target, err := hostLookup(mnt, ref, d)
				if err != nil {
					errs <- fmt.Errorf("%s #%d: %w", ref, j, err)
					return
				}
				var st syscall.Stat_t
				if err := syscall.Stat(filepath.Join(target, "diff/etc/hostname"), &st); err != nil {
					errs <- err
					return
				}
				inos[i][j] = st.Ino
			}()
		}
	}
	started.Wait()
	time.Sleep(50 * time.Millisecond) // let the lookups reach the resolver
	close(r.gate)
	done.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for i, ref := range refs {
		for j := range n {
			if inos[i][j] != inos[i][0] {
				t.Errorf("%s: lookup %d saw inode %d, lookup 0 saw %d", ref, j, inos[i][j], inos[i][0])
			}
		}
		lookups, uses, _ := r.counts(ref, d)
		if lookups != 1 || uses != n {
			t.Errorf("%s: %d resolver lookups and %d uses, want 1 and %d", ref, lookups, uses, n)
		}
	}
	if inos[0][0] == inos[1][0] {
		t.Errorf("the two images' copies of the layer share inode %d", inos[0][0])
	}
}

const helperEnv = "ALSFS_TEST_HELPER_MOUNT"

// TestMain runs the mount helper of TestStaleMount when asked to.
func TestMain(m *testing.M) {
	if mnt := os.Getenv(helperEnv); mnt != "" {
		if _, err := Mount(mnt, newTestResolver(), Options{}); err != nil {
			fmt.Println("mount:", err)
			os.Exit(1)
		}
		fmt.Println("ready")
		select {} // serve until killed
	}
	os.Exit(m.Run())
}

// TestStaleMount kills a daemon serving a mount, then cleans up the
// stale mount it left and mounts again.
func TestStaleMount(t *testing.T) {
	canMount(t)
	mnt := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+mnt)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait(); unix.Unmount(mnt, unix.MNT_DETACH) })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "ready\n" {
		t.Fatalf("helper said %q, %v", line, err)
	}
	if err := CleanStaleMount(mnt); !errors.Is(err, ErrMounted) {
		t.Errorf("CleanStaleMount(live mount) = %v, want ErrMounted", err)
	}
	if _, err := Mount(mnt, newTestResolver(), Options{}); !errors.Is(err, ErrMounted) {
		t.Errorf("Mount over a live mount = %v, want ErrMounted", err)
	}

	cmd.Process.Kill()
	cmd.Wait()
	if err := probe(mnt); !errors.Is(err, syscall.ENOTCONN) {
		t.Fatalf("stat of the dead mount = %v, want ENOTCONN", err)
	}
	if err := CleanStaleMount(mnt); err != nil {
		t.Fatalf("CleanStaleMount = %v", err)
	}
	if mounted, err := isMountPoint(mnt); err != nil || mounted {
		t.Fatalf("after CleanStaleMount: mounted %v, %v", mounted, err)
	}
	if err := CleanStaleMount(mnt); err != nil {
		t.Errorf("CleanStaleMount with nothing mounted = %v", err)
	}

	d := layerDigest("main")
	r := newTestResolver()
	r.add(testRef, d, simpleLayer(t))
	s, err := Mount(mnt, r, Options{})
	if err != nil {
		t.Fatalf("Mount after cleaning: %v", err)
	}
	defer s.Unmount()
	if _, err := hostLookup(mnt, testRef, d); err != nil {
		t.Errorf("lookup on the new mount: %v", err)
	}
}

func TestUnescapeMountinfo(t *testing.T) {
	tests := map[string]string{
		`/a/b`:           "/a/b",
		`/with\040space`: "/with space",
		`/tab\011nl\012`: "/tab\tnl\n",
		`/back\134slash`: `/back\slash`,
		`/bad\04`:        `/bad\04`,
		`/bad\9999`:      `/bad\9999`,
	}
	for in, want := range tests {
		if got := unescapeMountinfo(in); got != want {
			t.Errorf("unescapeMountinfo(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestServerLifecycle(t *testing.T) {
	canMount(t)
	d := layerDigest("main")
	r := newTestResolver()
	r.add(testRef, d, simpleLayer(t))
	mnt := t.TempDir()
	s, err := Mount(mnt, r, Options{})
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(mnt, encodeRef(testRef), d.String(), "diff/etc/hostname")
	var before syscall.Stat_t
	if err := syscall.Stat(file, &before); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}

	// Evict: the open file keeps working, the next lookup asks again.
	if !s.Evict(testRef, d) {
		t.Errorf("Evict of a known layer = false")
	}
	if s.Evict(testRef, d) {
		t.Errorf("second Evict = true, want false")
	}
	var after syscall.Stat_t
	if err := syscall.Stat(file, &after); err != nil {
		t.Fatalf("stat after Evict: %v", err)
	}
	if lookups, _, _ := r.counts(testRef, d); lookups != 2 || after.Ino == before.Ino {
		t.Errorf("after Evict: %d resolver lookups, inode %d (was %d); want 2 lookups and a new inode", lookups, after.Ino, before.Ino)
	}
	buf := make([]byte, 16)
	if n, err := f.ReadAt(buf, 0); string(buf[:n]) != "box\n" {
		t.Errorf("read of a file opened before Evict = %q, %v", buf[:n], err)
	}
	// The evicted layer is released only once the kernel lets go of it:
	// not while a file of it is open.
	if n := r.layerReleases(testRef, d); n != 0 {
		t.Errorf("layer released %d times while a file of it is open, want 0", n)
	}
	f2, err := os.Open(file) // through the new view
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	s.EvictIdle(time.Hour) // evicts nothing, asks the kernel to drop what it no longer uses
	waitUntil(t, "the evicted layer released after its last file closed", func() bool { return r.layerReleases(testRef, d) == 1 })
	f = f2

	// A busy mount does not unmount.
	if err := s.Unmount(); err == nil || !strings.Contains(strings.ToLower(err.Error()), "busy") {
		t.Errorf("Unmount with an open file = %v, want a busy error", err)
	}
	if err := probe(mnt); err != nil {
		t.Errorf("the filesystem stopped serving after a failed Unmount: %v", err)
	}
	f.Close()

	// Unmounting from outside ends Wait.
	waited := make(chan struct{})
	go func() { s.Wait(); close(waited) }()
	if err := unix.Unmount(mnt, 0); err != nil {
		t.Fatalf("umount: %v", err)
	}
	select {
	case <-waited:
	case <-time.After(10 * time.Second):
		t.Fatal("Wait did not return after the filesystem was unmounted")
	}
	if mounted, err := isMountPoint(mnt); mounted || err != nil {
		t.Errorf("after umount: mounted %v, %v", mounted, err)
	}
	if n := r.layerReleases(testRef, d); n != 2 {
		t.Errorf("layer released %d times after unmount, want 2 (both views)", n)
	}
}

// TestEvictLayerAndIdle: EvictLayer drops a layer's directories under
// every ref; EvictIdle those not looked up for a while; both release the
// layers nobody holds.
func TestEvictLayerAndIdle(t *testing.T) {
	canMount(t)
	a, b := layerDigest("a"), layerDigest("b")
	r := newTestResolver()
	for _, ref := range []string{testRef, "example.com/other:1"} {
		r.add(ref, a, simpleLayer(t))
		r.add(ref, b, simpleLayer(t))
	}
	s, mnt := mountTest(t, r, Options{LayerDirTimeout: time.Millisecond})
	stat := func(ref string, d digest.Digest) {
		t.Helper()
		if _, err := os.Stat(filepath.Join(mnt, encodeRef(ref), d.String(), "diff/etc/hostname")); err != nil {
			t.Fatal(err)
		}
	}
	for _, ref := range []string{testRef, "example.com/other:1"} {
		stat(ref, a)
		stat(ref, b)
	}
	if n := s.EvictLayer(a); n != 2 {
		t.Errorf("EvictLayer = %d, want 2 (one per ref)", n)
	}
	waitUntil(t, "layer a released under both refs", func() bool {
		return r.layerReleases(testRef, a) == 1 && r.layerReleases("example.com/other:1", a) == 1
	})
	if r.layerReleases(testRef, b) != 0 {
		t.Error("EvictLayer(a) released b")
	}
	time.Sleep(20 * time.Millisecond)
	stat(testRef, b) // looked up again: stays
	if n := s.EvictIdle(10 * time.Millisecond); n != 1 {
		t.Errorf("EvictIdle = %d, want 1 (b under the other ref)", n)
	}
	waitUntil(t, "idle view released", func() bool { return r.layerReleases("example.com/other:1", b) == 1 })
	if r.layerReleases(testRef, b) != 0 {
		t.Error("EvictIdle released a view looked up just now")
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
