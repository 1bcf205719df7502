package remote

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
)

// blobServer serves one blob with Go's http.ServeContent (real single and
// multipart range semantics) and records the Range headers it receives.
type blobServer struct {
	*httptest.Server
	content []byte
	mu      sync.Mutex
	ranges  []string // Range header of each blob GET
}

func newBlobServer(t *testing.T, content []byte, tlsServer bool) *blobServer {
	t.Helper()
	bs := &blobServer{content: content}
	path := "/v2/ns/app/blobs/" + digest.FromBytes(content).String()
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v2/":
			w.WriteHeader(http.StatusOK)
		case path:
			bs.mu.Lock()
			bs.ranges = append(bs.ranges, r.Header.Get("Range"))
			bs.mu.Unlock()
			http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(content))
		default:
			http.NotFound(w, r)
		}
	})
	if tlsServer {
		bs.Server = httptest.NewTLSServer(h)
	} else {
		bs.Server = httptest.NewServer(h)
	}
	t.Cleanup(bs.Close)
	return bs
}

func (bs *blobServer) host() string {
	u, _ := url.Parse(bs.URL)
	return u.Host
}

func (bs *blobServer) requests() []string {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	return append([]string(nil), bs.ranges...)
}

// insecureClient returns a client with the real transport that treats host
// as an insecure registry.
func insecureClient(t *testing.T, host string) *Client {
	t.Helper()
	c, err := NewClient(Options{InsecureRegistries: []string{host}, BackoffBase: time.Millisecond})
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestServeContentRanges(t *testing.T) {
	content := testContent(1 << 20)
	bs := newBlobServer(t, content, false)
	c := insecureClient(t, bs.host())
	b := newBlob(t, c, bs.host()+"/ns/app", content)
	rng := rand.New(rand.NewPCG(7, 7))
	tests := []struct {
		name         string
		ranges       []Range
		wantRequests int
	}{
		{"one range", []Range{{12345, 4096}}, 1},
		{"last byte", []Range{{int64(len(content)) - 1, 1}}, 1},
		{"two ranges", []Range{{0, 10}, {500000, 70000}}, 1},
		{"overlapping and adjacent", []Range{{100, 100}, {150, 100}, {250, 50}, {9000, 1}}, 1},
		{"40 disjoint ranges (two requests of at most 32)", disjointRanges(rng, 40, int64(len(content))), 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := len(bs.requests())
			got, err := b.ReadRanges(context.Background(), tc.ranges)
			if err != nil {
				t.Fatalf("ReadRanges: %v", err)
			}
			checkRanges(t, content, tc.ranges, got)
			if n := len(bs.requests()) - before; n != tc.wantRequests {
				t.Errorf("blob requests = %d, want %d (Range headers %q)", n, tc.wantRequests, bs.requests()[before:])
			}
		})
	}
	if s := c.Stats(); s.MultiRangeFallbacks != 0 || s.Retries != 0 || s.BlobFullBytes != 0 {
		t.Errorf("stats = %+v, want no fallbacks, retries or full bodies against ServeContent", s)
	}
}

// disjointRanges returns n non-adjacent ranges in random order.
func disjointRanges(rng *rand.Rand, n int, size int64) []Range {
	step := size / int64(n)
	out := make([]Range, n)
	for i := range out {
		out[i] = Range{Offset: int64(i)*step + rng.Int64N(step/4), Length: 1 + rng.Int64N(step/2)}
	}
	rng.Shuffle(n, func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out
}

func TestServeContentOpenAndReaderAt(t *testing.T) {
	content := testContent(3<<20 + 17)
	bs := newBlobServer(t, content, false)
	c := insecureClient(t, bs.host())
	b := newBlob(t, c, bs.host()+"/ns/app", content)

	rc, err := b.Open(context.Background())
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	got, err := io.ReadAll(rc)
	_ = rc.Close()
	if err != nil || !bytes.Equal(got, content) {
		t.Fatalf("Open+ReadAll = %d bytes, %v; want the %d-byte content", len(got), err, len(content))
	}
	if s := c.Stats(); s.BlobFullBytes != int64(len(content)) {
		t.Errorf("Stats().BlobFullBytes = %d, want %d", s.BlobFullBytes, len(content))
	}

	sr := io.NewSectionReader(b.ReaderAt(context.Background()), 1000, int64(len(content))-1000)
	got, err = io.ReadAll(sr)
	if err != nil || !bytes.Equal(got, content[1000:]) {
		t.Fatalf("SectionReader ReadAll = %d bytes, %v; want %d bytes", len(got), err, len(content)-1000)
	}
	p := make([]byte, 100)
	n, err := b.ReaderAt(context.Background()).ReadAt(p, int64(len(content))-40)
	if n != 40 || err != io.EOF || !bytes.Equal(p[:40], content[len(content)-40:]) {
		t.Errorf("ReadAt at the end = %d, %v; want 40, io.EOF and the last bytes", n, err)
	}
	if _, err := b.ReadRanges(context.Background(), []Range{{int64(len(content)) - 1, 2}}); !errors.Is(err, ErrInvalidRange) {
		t.Errorf("ReadRanges past the end error = %v, want ErrInvalidRange", err)
	}
}

// TestInsecureSchemes: insecure registries are reached over https without
// verification, or plain http; secure ones never fall back.
func TestInsecureSchemes(t *testing.T) {
	content := testContent(1000)
	plain := newBlobServer(t, content, false)
	tlsSrv := newBlobServer(t, content, true)
	conf := filepath.Join(t.TempDir(), "registries.conf")
	if err := os.WriteFile(conf, []byte("[[registry]]\nlocation = \""+plain.host()+"\"\ninsecure = true\n\n"+
		"[[registry]]\nlocation = \"blocked.test\"\nblocked = true\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		opts    Options
		host    string
		wantErr bool
	}{
		{"http via option", Options{InsecureRegistries: []string{plain.host()}}, plain.host(), false},
		{"http via registries.conf", Options{RegistriesConf: conf}, plain.host(), false},
		{"https without verification", Options{InsecureRegistries: []string{tlsSrv.host()}}, tlsSrv.host(), false},
		{"self-signed https, secure", Options{}, tlsSrv.host(), true},
		{"plain http, secure", Options{}, plain.host(), true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.opts.BackoffBase = time.Millisecond
			c, err := NewClient(tc.opts)
			if err != nil {
				t.Fatalf("NewClient: %v", err)
			}
			defer c.Close()
			got, err := newBlob(t, c, tc.host+"/ns/app", content).ReadRanges(context.Background(), []Range{{10, 20}})
			if tc.wantErr {
				if err == nil {
					t.Fatal("ReadRanges succeeded, want an error")
				}
				if s := c.Stats(); s.Retries != 0 {
					t.Errorf("Stats().Retries = %d, want 0 (TLS failures are final)", s.Retries)
				}
				return
			}
			if err != nil {
				t.Fatalf("ReadRanges: %v", err)
			}
			checkRanges(t, content, []Range{{10, 20}}, got)
		})
	}
	c, err := NewClient(Options{RegistriesConf: conf})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Resolve(context.Background(), mustRef(t, "blocked.test/x:1")); !errors.Is(err, ErrBlocked) {
		t.Errorf("Resolve of a blocked registry: %v, want ErrBlocked", err)
	}
	if _, err := NewClient(Options{RegistriesConf: filepath.Join(t.TempDir(), "missing.conf")}); err == nil ||
		!strings.Contains(err.Error(), "missing.conf") {
		t.Errorf("NewClient with a missing registries.conf: %v, want an error naming it", err)
	}
}
