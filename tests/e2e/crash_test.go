package e2e

import (
	"io/fs"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lazypull/lazypull/tests/imagegen"
	"github.com/lazypull/lazypull/tests/testenv"
)

// tmpFiles counts temporary files (interrupted writes) under dir.
func tmpFiles(t *testing.T, dir string) int {
	t.Helper()
	n := 0
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasPrefix(d.Name(), ".tmp-") {
			n++
		}
		return nil
	})
	return n
}

// countFiles counts the regular files under dir.
func countFiles(dir string) int {
	n := 0
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			n++
		}
		return nil
	})
	return n
}

// TestKillDuringPrefetch: the daemon is killed with SIGKILL while it
// prefetches; after a restart (which cleans the stale mount) the container
// of the image pulled before reads exact bytes, the cache kept what was
// committed and holds no partial entry.
func TestKillDuringPrefetch(t *testing.T) {
	img := cachedImage(t, imagegen.E2E())
	reg := testenv.StartRegistry(t, testenv.RegistryOptions{})
	push(t, reg, img, "lazypull/crash", "v1")
	ref := reg.Ref("lazypull/crash", "v1")
	runLazypull(t, map[string]any{"registry": map[string]any{"insecure": []string{reg.Host}}}, "index", "--push", ref)
	d := testenv.StartDaemon(t, testenv.DaemonOptions{Config: map[string]any{
		"registry": map[string]any{"insecure": []string{reg.Host}},
		// Slow enough to be caught in the middle.
		"prefetch": map[string]any{"bandwidth": "30MiB", "batch_size": "4MiB", "concurrency": 2},
	}})
	p := testenv.NewPodman(t, testenv.PodmanOptions{InsecureRegistries: []string{reg.Host}, StorageOpts: []string{d.ALSOption()}})
	if _, err := p.Pull(ref); err != nil {
		t.Fatal(err)
	}
	spans := filepath.Join(d.Root, "spancache")
	waitFor(t, 2*time.Minute, "prefetch to be under way", func() bool { return countFiles(spans) >= 10 })
	d.Kill()
	before := countFiles(spans)
	t.Logf("killed with %d spans committed and %d temporary files", before, tmpFiles(t, spans))

	if err := d.Start(); err != nil {
		t.Fatalf("restart after kill -9: %v", err)
	}
	if n := tmpFiles(t, spans); n != 0 {
		t.Errorf("%d temporary files left after restart", n)
	}
	want, err := img.ExpectedTree()
	if err != nil {
		t.Fatal(err)
	}
	compareTrees(t, p, ref, want, "rootfs after kill -9 and restart")
	st := d.Status(t)
	if st.Reads.Errors != 0 {
		t.Errorf("%d reads failed after restart", st.Reads.Errors)
	}
	if st.Cache.SpanEntries < before {
		t.Errorf("cache has %d spans after restart, %d were committed before the kill", st.Cache.SpanEntries, before)
	}
}

// TestKillDuringIndexing: the daemon is killed with SIGKILL while it indexes
// an image on demand for a pull. The interrupted pull falls back to an
// ordinary pull (the store just vanished); after a restart another pull of
// the image is lazy again and exact, and nothing half-written is used.
func TestKillDuringIndexing(t *testing.T) {
	img := cachedImage(t, imagegen.E2E())
	reg := testenv.StartRegistry(t, testenv.RegistryOptions{})
	push(t, reg, img, "lazypull/crashindex", "v1")
	ref := reg.Ref("lazypull/crashindex", "v1")
	d := testenv.StartDaemon(t, testenv.DaemonOptions{Config: map[string]any{
		"registry": map[string]any{"insecure": []string{reg.Host}},
		"index":    map[string]any{"on_demand": "sync", "parallel": 1},
		"prefetch": map[string]any{"enabled": false}, "verification": map[string]any{"enabled": false},
	}})
	p1 := testenv.NewPodman(t, testenv.PodmanOptions{InsecureRegistries: []string{reg.Host}, StorageOpts: []string{d.ALSOption()}})
	pulled := make(chan error, 1)
	go func() {
		_, err := p1.Pull(ref)
		pulled <- err
	}()
	spans := filepath.Join(d.Root, "spancache")
	waitFor(t, 2*time.Minute, "indexing to be under way", func() bool { return countFiles(spans) >= 5 })
	d.Kill()
	err := <-pulled
	t.Logf("pull interrupted by the kill: err=%v", err)
	if err := d.Start(); err != nil {
		t.Fatalf("restart after kill -9: %v", err)
	}
	if n := tmpFiles(t, d.Root); n != 0 {
		t.Errorf("%d temporary files left after restart", n)
	}
	p2 := testenv.NewPodman(t, testenv.PodmanOptions{InsecureRegistries: []string{reg.Host}, StorageOpts: []string{d.ALSOption()}})
	if _, err := p2.Pull(ref); err != nil {
		t.Fatalf("pull after restart: %v\n%s", err, d.LogTail(30))
	}
	if links := alsDiffLinks(t, p2.Root, d.MountPoint); len(links) != len(indexedLayers(img, 10<<20)) {
		t.Errorf("%d layers served lazily after the restart, want %d", len(links), len(indexedLayers(img, 10<<20)))
	}
	want, err := img.ExpectedTree()
	if err != nil {
		t.Fatal(err)
	}
	compareTrees(t, p2, ref, want, "rootfs pulled after the interrupted indexing")
}
