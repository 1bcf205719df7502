package layerstore

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/lazypull/lazypull/layerstore/alsfs"
	"github.com/lazypull/lazypull/layerstore/artifact"
	"github.com/lazypull/lazypull/layerstore/config"
	"github.com/lazypull/lazypull/layerstore/control"
	"github.com/lazypull/lazypull/ztoc"
)

// ---------------------------------------------------------------------------
// Stores.

// testStore is a Store with its root directory and captured log.
type testStore struct {
	*Store
	root  string
	logs  *logtest.Hook
	close sync.Once
}

// testConfig returns a configuration for a store under root talking to the
// registry at host: small spans and layers, on-demand indexing "sync",
// prefetch and background verification off, short retries.
func testConfig(root, host string) config.Config {
	cfg := config.DefaultFor(true)
	// What an installation does (the systemd unit's install -d -m 0700):
	// t.TempDir()'s directories are 0755, which the store refuses.
	_ = os.MkdirAll(root, 0o700)
	_ = os.Chmod(root, 0o700)
	cfg.RootDir = root
	cfg.MountPoint = filepath.Join(root, "store")
	cfg.Socket = filepath.Join(root, "lazypull.sock")
	cfg.Registry.Insecure = []string{host}
	// An empty registries.conf: the machine's does not apply.
	cfg.Registry.RegistriesConf = filepath.Join(root, "registries.conf")
	_ = os.WriteFile(cfg.Registry.RegistriesConf, nil, 0o644)
	cfg.Registry.MaxRetries = 2
	cfg.Registry.RequestTimeout = config.Duration(20 * time.Second)
	cfg.Index.MinLayerSize = 16 << 10
	cfg.Index.SpanSize = testSpanSize
	cfg.Index.OnDemand = "sync"
	cfg.Cache.SpanCacheSize = config.CacheSize{Bytes: 256 << 20}
	cfg.Cache.ArtifactCacheSize = config.CacheSize{Bytes: 64 << 20}
	cfg.Prefetch.Enabled = false
	cfg.Verify.Enabled = false
	cfg.Prefetch.BatchSize = 1 << 20
	return cfg
}

// openStore opens a Store with cfg; its Close runs in t.Cleanup (or earlier
// through closeStore).
func openStore(t testing.TB, cfg config.Config, opts Options) *testStore {
	t.Helper()
	logger, hook := logtest.NewNullLogger()
	logger.SetLevel(logrus.DebugLevel)
	if opts.Log == nil {
		opts.Log = logrus.NewEntry(logger)
	}
	if opts.Version == "" {
		opts.Version = "test"
	}
	s, err := New(cfg, opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ts := &testStore{Store: s, root: cfg.RootDir, logs: hook}
	t.Cleanup(ts.closeStore)
	return ts
}

// newTestStore opens a store in a new temporary root; mod may change the
// configuration first.
func newTestStore(t testing.TB, reg *testRegistry, mod func(*config.Config), opts Options) *testStore {
	t.Helper()
	cfg := testConfig(t.TempDir(), reg.host)
	if mod != nil {
		mod(&cfg)
	}
	return openStore(t, cfg, opts)
}

func (ts *testStore) closeStore() {
	ts.close.Do(func() { _ = ts.Store.Close() })
}

// lookup looks a layer up with a test deadline.
func (ts *testStore) lookup(t testing.TB, ref string, d digest.Digest) (alsfs.Layer, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return ts.Lookup(ctx, ref, d)
}

// mustLookup looks a layer up and fails the test when it is not served.
func (ts *testStore) mustLookup(t testing.TB, ref string, d digest.Digest) alsfs.Layer {
	t.Helper()
	l, err := ts.lookup(t, ref, d)
	if err != nil {
		t.Fatalf("Lookup(%q, %s) = %v, want a served layer", ref, d, err)
	}
	return l
}

// status returns the store's status and the status of layer d (nil when it
// is not listed).
func (ts *testStore) status(t testing.TB, d digest.Digest) (*control.Status, *control.LayerStatus) {
	t.Helper()
	st, err := ts.Status(context.Background())
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	for i := range st.Layers {
		if st.Layers[i].Digest == d.String() {
			return st, &st.Layers[i]
		}
	}
	return st, nil
}

// settle waits until no layer of the store has anything in flight (spans
// being fetched, inflated or written to disk).
func (ts *testStore) settle(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for _, l := range ts.loadedLayers() {
		for !l.spans.Idle() {
			if time.Now().After(deadline) {
				t.Fatalf("layer %s still busy after 10s", l.digest)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
}

// waitLayer polls the status of layer d until cond holds, failing the test
// after timeout.
func (ts *testStore) waitLayer(t testing.TB, d digest.Digest, timeout time.Duration, what string, cond func(*control.LayerStatus) bool) *control.LayerStatus {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		_, ls := ts.status(t, d)
		if ls != nil && cond(ls) {
			return ls
		}
		if time.Now().After(deadline) {
			t.Fatalf("layer %s: %s not reached within %s; last status %+v", d, what, timeout, ls)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func prefetchDone(ls *control.LayerStatus) bool { return strings.HasPrefix(ls.Prefetch, "done") }

// ---------------------------------------------------------------------------
// Reading layers.

// entryIndex returns the index of entry name in c.
func entryIndex(t testing.TB, c alsfs.LayerContent, name string) int {
	t.Helper()
	for i, e := range c.Entries() {
		if e.Name == name {
			return i
		}
	}
	t.Fatalf("no entry %q in the layer", name)
	return -1
}

// readFile reads entry i whole, in chunks of chunk bytes.
func readFile(ctx context.Context, c alsfs.LayerContent, i, size, chunk int) ([]byte, error) {
	out := make([]byte, 0, size)
	buf := make([]byte, chunk)
	for off := int64(0); ; {
		n, err := c.ReadFile(ctx, i, buf, off)
		out = append(out, buf[:n]...)
		off += int64(n)
		if errors.Is(err, io.EOF) || (err == nil && n < len(buf)) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		if n == 0 {
			return out, fmt.Errorf("ReadFile returned 0 bytes at %d without EOF", off)
		}
	}
}

// resolveLink returns the regular file entry i is (a hard link's target,
// as the FUSE tree resolves it before reading).
func resolveLink(t testing.TB, c alsfs.LayerContent, i int) int {
	t.Helper()
	es := c.Entries()
	for depth := 0; es[i].Type == ztoc.TypeHardlink; depth++ {
		if depth > 8 {
			t.Fatalf("hard link chain at %q too long", es[i].Name)
		}
		i = entryIndex(t, c, strings.TrimPrefix(es[i].Linkname, "./"))
	}
	return i
}

// checkAllFiles reads every regular file and hard link of the layer in
// chunks of chunk bytes and compares them with the test layer.
func checkAllFiles(t testing.TB, lv alsfs.Layer, tl *testLayer, chunk int) {
	t.Helper()
	c, err := lv.Content()
	if err != nil {
		t.Fatalf("Content: %v", err)
	}
	checked := 0
	for i, e := range c.Entries() {
		want, ok := tl.content(e.Name)
		if !ok {
			continue
		}
		got, err := readFile(context.Background(), c, resolveLink(t, c, i), len(want), chunk)
		if err != nil {
			t.Fatalf("read %s: %v", e.Name, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("read %s: got %d bytes differing from the %d of the layer", e.Name, len(got), len(want))
		}
		checked++
	}
	if want := countFiles(tl); checked != want {
		t.Fatalf("checked %d files, the layer has %d", checked, want)
	}
}

func countFiles(tl *testLayer) int {
	n := 0
	for _, f := range tl.files {
		if f.typ == tar.TypeReg || f.typ == tar.TypeLink {
			n++
		}
	}
	return n
}

// spanFiles returns the files of layer d's compressed spans in the span
// cache under root (whatever zTOC cut them).
func spanFiles(t testing.TB, root string, d digest.Digest) []string {
	t.Helper()
	dirs, err := filepath.Glob(filepath.Join(root, "spancache", d.Algorithm().String()+"-"+d.Encoded()+"-*"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, dir := range dirs {
		ents, err := os.ReadDir(dir)
		if err != nil {
			t.Fatalf("ReadDir: %v", err)
		}
		for _, e := range ents {
			if id, ok := strings.CutPrefix(e.Name(), "c"); ok {
				if _, err := strconv.Atoi(id); err == nil {
					out = append(out, filepath.Join(dir, e.Name()))
				}
			}
		}
	}
	return out
}

// spanID returns the span number of a file spanFiles returned.
func spanID(t testing.TB, p string) ztoc.SpanID {
	t.Helper()
	id, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(p), "c"))
	if err != nil {
		t.Fatalf("span file %s: %v", p, err)
	}
	return ztoc.SpanID(id)
}

// roundTripFunc turns a function into an http.RoundTripper. The fakes built
// on it pass requests to the real registry and produce faults a registry
// cannot produce on demand.
type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// baseTransport is a plain transport to the test registry.
func baseTransport(t testing.TB) *http.Transport {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	t.Cleanup(tr.CloseIdleConnections)
	return tr
}

// isLayerRangeGet reports whether req is a ranged GET of blob d.
func isLayerRangeGet(req *http.Request, d digest.Digest) bool {
	return req.Method == http.MethodGet && strings.HasSuffix(req.URL.Path, "/blobs/"+d.String()) && req.Header.Get("Range") != ""
}

// scopedMapping reports whether the local store under root maps layer to a
// zTOC for repository repo only (an index from outside, not verified).
func scopedMapping(t testing.TB, root, repo string, layer digest.Digest) bool {
	t.Helper()
	local, err := artifact.OpenLocal(filepath.Join(root, "artifacts"), 0)
	if err != nil {
		t.Fatalf("OpenLocal: %v", err)
	}
	_, err = local.ReadRef(context.Background(), artifact.LayerRef, artifact.ScopedLayerKey(repo, layer, testSpanSize))
	return err == nil
}

// anyLayer returns a loaded layer with digest d (trusted or scoped), or
// nil.
func (ts *testStore) anyLayer(d digest.Digest) *layer {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	for k, l := range ts.layers {
		if k.digest == d {
			return l
		}
	}
	return nil
}

// loadedCount returns the number of layers loaded.
func (ts *testStore) loadedCount() int {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return len(ts.layers)
}

// waitUntil polls cond until it holds, failing the test after 20 seconds.
func waitUntil(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
