package layerstore

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/lazypull/lazypull/layerstore/alsfs"
)

// TestChurnKeepsDaemonFlat looks up, reads, uses and releases many distinct
// images through a real mount, round after round, with the store's sweep
// (what a day of sweeping would do, without waiting for it) in between:
// the layers, images and FUSE directories the daemon holds go back to
// nothing, and its heap and open files stay flat.
func TestChurnKeepsDaemonFlat(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting FUSE needs root")
	}
	reg := newTestRegistry(t)
	const images = 60
	var imgs []*testImage
	cfg := testConfig(t.TempDir(), reg.host)
	for i := range images {
		l := stdLayer(t, uint64(1000+i), 24, 8)
		imgs = append(imgs, reg.pushImage(t, "churn/img"+string(rune('a'+i%26))+string(rune('a'+i/26)), "v1", []*testLayer{l}, imageOptions{}))
		putLocalZtoc(t, cfg.RootDir, buildZtoc(t, l, nil))
	}
	s := openStore(t, cfg, Options{})
	mnt := t.TempDir()
	srv, err := alsfs.Mount(mnt, s.Store, alsfs.Options{SingleUser: true, ReadAheadKB: -1, LayerDirTimeout: time.Millisecond})
	if err != nil {
		t.Fatalf("Mount: %v", err)
	}
	t.Cleanup(func() {
		if err := srv.Unmount(); err != nil {
			t.Errorf("Unmount: %v", err)
		}
	})
	s.setEvicter(srv)
	round := func() {
		t.Helper()
		for _, img := range imgs {
			l := img.layers[0]
			dir := filepath.Join(mnt, base64.StdEncoding.EncodeToString([]byte(img.ref)), l.digest.String())
			got, err := os.ReadFile(filepath.Join(dir, "diff", "etc/hostname"))
			want, _ := l.content("etc/hostname")
			if err != nil || string(got) != string(want) {
				t.Fatalf("read %s: %v", img.ref, err)
			}
			if f, err := os.Create(filepath.Join(dir, "use")); err == nil {
				f.Close()
			}
			if err := os.Remove(dir); err == nil {
				t.Fatalf("rmdir of a layer directory succeeded")
			}
		}
		// A day of sweeps: every layer directory and layer is idle.
		for i := 0; i < 20 && s.loadedCount() > 0; i++ {
			s.sweep(time.Now().Add(time.Hour), 0, 0)
			time.Sleep(10 * time.Millisecond)
		}
	}
	measure := func() (heap uint64, fds int) {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		ents, _ := os.ReadDir("/proc/self/fd")
		return ms.HeapInuse, len(ents)
	}
	round() // warm up: caches, connections, the go-fuse tree
	heap0, fds0 := measure()
	const rounds = 6
	for range rounds {
		round()
	}
	heap1, fds1 := measure()
	t.Logf("%d rounds of %d images: heap %d -> %d KiB, open files %d -> %d", rounds, images, heap0>>10, heap1>>10, fds0, fds1)
	if n := s.loadedCount(); n != 0 {
		t.Errorf("%d layers still loaded after every directory and reference was released", n)
	}
	s.mu.Lock()
	nimages, nindexes := len(s.images), len(s.registryIndexes)
	s.mu.Unlock()
	if nimages != 0 || nindexes != 0 {
		t.Errorf("resolved images %d, registry index answers %d kept past their TTL, want 0", nimages, nindexes)
	}
	if heap1 > heap0+heap0/2+4<<20 {
		t.Errorf("heap grew from %d to %d KiB over %d rounds", heap0>>10, heap1>>10, rounds)
	}
	if fds1 > fds0+4 {
		t.Errorf("open files grew from %d to %d over %d rounds", fds0, fds1, rounds)
	}
}
