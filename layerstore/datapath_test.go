package layerstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/layerstore/alsfs"
	"github.com/lazypull/lazypull/layerstore/config"
	"github.com/lazypull/lazypull/tests/testenv"
	"github.com/lazypull/lazypull/ztoc"
)

// servedFromLocal pushes l as an image, stores its zTOC locally and opens a
// store (prefetch off) on that root; mod may change the configuration.
func servedFromLocal(t testing.TB, reg *testRegistry, l *testLayer, mod func(*config.Config), opts Options) (*testStore, *testImage, *testZtoc) {
	t.Helper()
	img := reg.pushImage(t, "app/data", "v1", []*testLayer{l}, imageOptions{})
	z := buildZtoc(t, l, nil)
	cfg := testConfig(t.TempDir(), reg.host)
	if mod != nil {
		mod(&cfg)
	}
	putLocalZtoc(t, cfg.RootDir, z)
	return openStore(t, cfg, opts), img, z
}

// TestReadExactBytes reads every file whole in several chunk sizes, and
// random pieces of files, and compares them with the tar.
func TestReadExactBytes(t *testing.T) {
	reg := newTestRegistry(t)
	l := stdLayer(t, 40, 500, 300)
	s, img, _ := servedFromLocal(t, reg, l, nil, Options{})
	lv := s.mustLookup(t, img.ref, l.digest)
	for _, chunk := range []int{4096, 65537, 300 << 10, 2 << 20} {
		t.Run(fmt.Sprintf("chunk %d", chunk), func(t *testing.T) {
			checkAllFiles(t, lv, l, chunk)
		})
	}
	c, err := lv.Content()
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	names := []string{"data/random.bin", "data/log.txt", "data/tail.bin", "data/link"}
	for range 200 {
		name := names[rng.IntN(len(names))]
		want, _ := l.content(name)
		off := rng.IntN(len(want) + 10)
		p := make([]byte, rng.IntN(200<<10)+1)
		n, err := c.ReadFile(context.Background(), resolveLink(t, c, entryIndex(t, c, name)), p, int64(off))
		end := min(off+len(p), len(want))
		if off >= len(want) {
			if n != 0 || !errors.Is(err, io.EOF) {
				t.Fatalf("ReadFile(%s, %d bytes at %d) past the end = %d, %v, want 0, EOF", name, len(p), off, n, err)
			}
			continue
		}
		if err != nil && !(errors.Is(err, io.EOF) && end == len(want)) {
			t.Fatalf("ReadFile(%s, %d bytes at %d) = %d, %v", name, len(p), off, n, err)
		}
		if n != end-off || !bytes.Equal(p[:n], want[off:end]) {
			t.Fatalf("ReadFile(%s, %d bytes at %d) = %d bytes, want %d exact bytes", name, len(p), off, n, end-off)
		}
	}
}

// TestReadAcrossSpansOneRequest reads a file spanning many spans with one
// call: one range request fetches them all, and reading again asks the
// registry for nothing.
func TestReadAcrossSpansOneRequest(t *testing.T) {
	reg := newTestRegistry(t)
	l := stdLayer(t, 41, 600, 100)
	s, img, z := servedFromLocal(t, reg, l, nil, Options{})
	lv := s.mustLookup(t, img.ref, l.digest)
	c, err := lv.Content()
	if err != nil {
		t.Fatal(err)
	}
	x := z.openIndex(t)
	i := entryIndex(t, c, "data/random.bin")
	m := c.Entries()[i]
	first, last := x.SpanOf(m.UncompressedOffset), x.SpanOf(m.UncompressedOffset+m.UncompressedSize-1)
	if last-first < 4 {
		t.Fatalf("the file covers spans %d-%d, want at least 5 spans", first, last)
	}
	mark := reg.mark()
	want, _ := l.content("data/random.bin")
	p := make([]byte, len(want))
	if n, err := c.ReadFile(context.Background(), i, p, 0); n != len(p) || (err != nil && !errors.Is(err, io.EOF)) {
		t.Fatalf("ReadFile = %d, %v, want %d", n, err, len(p))
	}
	if !bytes.Equal(p, want) {
		t.Fatal("ReadFile returned other bytes than the file's")
	}
	gets := reg.since(mark, blobGets(l.digest))
	c0, _ := x.SpanCompressedRange(first)
	_, c1 := x.SpanCompressedRange(last)
	if wantRange := fmt.Sprintf("bytes=%d-%d", c0, c1-1); len(gets) != 1 || gets[0].rng != wantRange {
		t.Fatalf("a read of spans %d-%d sent %+v, want one GET with Range %s", first, last, gets, wantRange)
	}
	mark = reg.mark()
	checkAllFiles(t, lv, l, 1<<20)
	for _, r := range reg.since(mark, blobGets(l.digest)) {
		if r.rng == fmt.Sprintf("bytes=%d-%d", c0, c1-1) {
			t.Errorf("spans %d-%d fetched again after they were cached", first, last)
		}
	}
}

// TestBlobReadAt reads the file `blob` at random offsets and sizes: it is
// the compressed layer byte for byte.
func TestBlobReadAt(t *testing.T) {
	reg := newTestRegistry(t)
	l := stdLayer(t, 42, 400, 200)
	s, img, _ := servedFromLocal(t, reg, l, nil, Options{})
	lv := s.mustLookup(t, img.ref, l.digest)
	b, size := lv.Blob()
	if size != int64(len(l.blob)) {
		t.Fatalf("Blob size = %d, want %d", size, len(l.blob))
	}
	type read struct{ off, n int }
	reads := []read{{0, 1}, {0, 10}, {5, 20}, {0, 70000}, {len(l.blob) - 1, 1}, {len(l.blob) - 8, 100},
		{len(l.blob), 10}, {len(l.blob) + 100, 10}}
	rng := rand.New(rand.NewPCG(3, 4))
	for range 150 {
		reads = append(reads, read{rng.IntN(len(l.blob)), rng.IntN(150<<10) + 1})
	}
	for _, r := range reads {
		p := make([]byte, r.n)
		n, err := b.ReadAt(p, int64(r.off))
		end := min(r.off+r.n, len(l.blob))
		wantN := max(end-r.off, 0)
		wantEOF := r.off+r.n > len(l.blob)
		if n != wantN || (wantEOF && !errors.Is(err, io.EOF)) || (!wantEOF && err != nil) {
			t.Fatalf("Blob ReadAt(%d bytes at %d) = %d, %v, want %d (EOF %v)", r.n, r.off, n, err, wantN, wantEOF)
		}
		if wantN > 0 && !bytes.Equal(p[:n], l.blob[r.off:end]) {
			t.Fatalf("Blob ReadAt(%d bytes at %d) returned other bytes than the layer's", r.n, r.off)
		}
	}
	if _, err := b.ReadAt(make([]byte, 1), -1); err == nil {
		t.Error("Blob ReadAt at -1 succeeded, want an error")
	}
}

// faultTransport passes requests to the registry through base, except the
// ranged GETs of one layer, which fault decides about (n counts them from
// 1). It is a fake because a registry cannot produce these faults on
// demand.
type faultTransport struct {
	base  http.RoundTripper
	layer digest.Digest
	n     atomic.Int64
	multi atomic.Int64 // multi-range requests seen
	fault func(n int64, req *http.Request, base http.RoundTripper) (*http.Response, error)
}

func (f *faultTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if !isLayerRangeGet(req, f.layer) {
		return f.base.RoundTrip(req)
	}
	if strings.Contains(req.Header.Get("Range"), ",") {
		f.multi.Add(1)
	}
	return f.fault(f.n.Add(1), req, f.base)
}

// errAfter is a body that returns data and then err.
type errAfter struct {
	r   io.Reader
	err error
	c   io.Closer
}

func (e *errAfter) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err == io.EOF {
		return n, e.err
	}
	return n, err
}

func (e *errAfter) Close() error { return e.c.Close() }

func resetErr() error {
	return &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}
}

// multipartAnswer answers a multi-range request from blob like a registry
// with multipart/byteranges support.
func multipartAnswer(req *http.Request, blob []byte) (*http.Response, error) {
	spec := strings.TrimPrefix(req.Header.Get("Range"), "bytes=")
	const boundary = "lazypull-test-boundary"
	var body bytes.Buffer
	for _, part := range strings.Split(spec, ",") {
		var a, b int
		if _, err := fmt.Sscanf(strings.TrimSpace(part), "%d-%d", &a, &b); err != nil {
			return nil, fmt.Errorf("fake: range %q: %w", part, err)
		}
		fmt.Fprintf(&body, "\r\n--%s\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes %d-%d/%d\r\n\r\n", boundary, a, b, len(blob))
		body.Write(blob[a : b+1])
	}
	fmt.Fprintf(&body, "\r\n--%s--\r\n", boundary)
	return &http.Response{
		StatusCode: http.StatusPartialContent, Status: "206 Partial Content", Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header:        http.Header{"Content-Type": {"multipart/byteranges; boundary=" + boundary}},
		Body:          io.NopCloser(&body),
		ContentLength: int64(body.Len()),
		Request:       req,
	}, nil
}

// readHoles reads the blob so that one fetch needs spans k, k+2 and k+4
// while k+1 and k+3 are cached: the registry gets one request with three
// ranges. It returns the bytes of spans k..k+4.
func readHoles(t *testing.T, lv alsfs.Layer, x *ztoc.LayerIndex, k ztoc.SpanID) ([]byte, int64) {
	t.Helper()
	b, _ := lv.Blob()
	for _, id := range []ztoc.SpanID{k + 1, k + 3} {
		s0, s1 := x.SpanCompressedRange(id)
		if _, err := b.ReadAt(make([]byte, s1-s0-2), s0+1); err != nil {
			t.Fatalf("blob ReadAt of span %d: %v", id, err)
		}
	}
	c0, _ := x.SpanCompressedRange(k)
	_, c1 := x.SpanCompressedRange(k + 4)
	p := make([]byte, c1-c0)
	if n, err := b.ReadAt(p, c0); n != len(p) || err != nil {
		t.Fatalf("blob ReadAt(%d at %d) = %d, %v", len(p), c0, n, err)
	}
	return p, c0
}

// TestFaultyRegistryAnswers serves layers through transports that answer
// like registries misbehave: every read stays exact, retries are counted,
// and nothing is marked bad.
func TestFaultyRegistryAnswers(t *testing.T) {
	l := stdLayer(t, 43, 500, 200)
	tests := []struct {
		name        string
		fault       func(n int64, req *http.Request, base http.RoundTripper) (*http.Response, error)
		wantRetries bool
	}{
		{"multipart answers", func(n int64, req *http.Request, base http.RoundTripper) (*http.Response, error) {
			if strings.Contains(req.Header.Get("Range"), ",") {
				return multipartAnswer(req, l.blob)
			}
			return base.RoundTrip(req)
		}, false},
		{"200 with the full body", func(n int64, req *http.Request, base http.RoundTripper) (*http.Response, error) {
			req = req.Clone(req.Context())
			req.Header.Del("Range")
			return base.RoundTrip(req)
		}, false},
		{"truncated bodies", func(n int64, req *http.Request, base http.RoundTripper) (*http.Response, error) {
			resp, err := base.RoundTrip(req)
			if err != nil || n > 3 {
				return resp, err
			}
			resp.Body = &errAfter{r: io.LimitReader(resp.Body, resp.ContentLength/2), err: io.ErrUnexpectedEOF, c: resp.Body}
			return resp, nil
		}, true},
		{"5xx burst", func(n int64, req *http.Request, base http.RoundTripper) (*http.Response, error) {
			if n <= 2 || (n >= 6 && n <= 7) {
				return &http.Response{StatusCode: http.StatusServiceUnavailable, Status: "503 Service Unavailable",
					Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, Header: http.Header{},
					Body: io.NopCloser(strings.NewReader("busy")), ContentLength: 4, Request: req}, nil
			}
			return base.RoundTrip(req)
		}, true},
		{"connection resets", func(n int64, req *http.Request, base http.RoundTripper) (*http.Response, error) {
			if n%3 == 1 {
				return nil, resetErr()
			}
			return base.RoundTrip(req)
		}, true},
		{"reset in the middle of a body", func(n int64, req *http.Request, base http.RoundTripper) (*http.Response, error) {
			resp, err := base.RoundTrip(req)
			if err != nil || n%2 == 0 {
				return resp, err
			}
			resp.Body = &errAfter{r: io.LimitReader(resp.Body, resp.ContentLength/3), err: resetErr(), c: resp.Body}
			return resp, nil
		}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			reg := newTestRegistry(t)
			ft := &faultTransport{base: baseTransport(t), layer: l.digest, fault: tc.fault}
			s, img, z := servedFromLocal(t, reg, l, func(c *config.Config) { c.Registry.MaxRetries = 3 }, Options{Transport: ft})
			lv := s.mustLookup(t, img.ref, l.digest)
			x := z.openIndex(t)
			got, c0 := readHoles(t, lv, x, 2)
			if !bytes.Equal(got, l.blob[c0:c0+int64(len(got))]) {
				t.Fatal("blob bytes read around cached spans differ from the layer's")
			}
			checkAllFiles(t, lv, l, 256<<10)
			b, size := lv.Blob()
			all := make([]byte, size)
			if n, err := b.ReadAt(all, 0); n != int(size) || err != nil || !bytes.Equal(all, l.blob) {
				t.Fatalf("whole blob ReadAt = %d, %v (equal %v), want the layer blob", n, err, bytes.Equal(all, l.blob))
			}
			st, ls := s.status(t, l.digest)
			if ls == nil || ls.Bad != "" || ls.ReadErrors != 0 {
				t.Errorf("layer status %+v, want not bad, no read errors", ls)
			}
			if got := st.Registry.Retries > 0; got != tc.wantRetries {
				t.Errorf("registry retries = %d, want retries %v", st.Registry.Retries, tc.wantRetries)
			}
			if ft.n.Load() == 0 {
				t.Error("the fault transport saw no layer range request")
			}
			if tc.name == "multipart answers" && ft.multi.Load() == 0 {
				t.Error("no multi-range request was sent, want one for the spans around cached ones")
			}
		})
	}
}

// TestMultiRangeRealRegistry reads spans around cached ones from Debian's
// docker-registry, which answers multi-range requests with
// multipart/byteranges: the three missing spans come in one request.
func TestMultiRangeRealRegistry(t *testing.T) {
	r := testenv.StartRegistry(t, testenv.RegistryOptions{})
	l := stdLayer(t, 44, 500, 100)
	img := pushImageTo(t, r.Host, "app/real", "v1", []*testLayer{l}, imageOptions{})
	z := buildZtoc(t, l, nil)
	var (
		mu     sync.Mutex
		ranges []string
	)
	rt := roundTripFunc(func(req *http.Request) (*http.Response, error) {
		if isLayerRangeGet(req, l.digest) {
			mu.Lock()
			ranges = append(ranges, req.Header.Get("Range"))
			mu.Unlock()
		}
		return http.DefaultTransport.RoundTrip(req)
	})
	cfg := testConfig(t.TempDir(), r.Host)
	putLocalZtoc(t, cfg.RootDir, z)
	s := openStore(t, cfg, Options{Transport: rt})
	lv := s.mustLookup(t, img.ref, l.digest)
	x := z.openIndex(t)
	mu.Lock()
	before := len(ranges)
	mu.Unlock()
	got, c0 := readHoles(t, lv, x, 3)
	if !bytes.Equal(got, l.blob[c0:c0+int64(len(got))]) {
		t.Fatal("blob bytes read around cached spans differ from the layer's")
	}
	mu.Lock()
	sent := append([]string(nil), ranges[before:]...)
	mu.Unlock()
	// Two single spans first, then one request for spans 3, 5 and 7.
	if len(sent) != 3 || strings.Count(sent[2], ",") != 2 {
		t.Errorf("range requests %q, want 2 single ones and one with 3 ranges", sent)
	}
	checkAllFiles(t, lv, l, 1<<20)
}

// TestReadFallsBackToOtherRepository serves a layer found through two
// repositories; when the one looked up last loses the blob, reads come from
// the other.
func TestReadFallsBackToOtherRepository(t *testing.T) {
	reg := newTestRegistry(t)
	l := stdLayer(t, 45, 300, 100)
	imgA := reg.pushImage(t, "team/a", "v1", []*testLayer{l}, imageOptions{})
	imgB := reg.pushImage(t, "team/b", "v1", []*testLayer{l}, imageOptions{})
	cfg := testConfig(t.TempDir(), reg.host)
	putLocalZtoc(t, cfg.RootDir, buildZtoc(t, l, nil))
	s := openStore(t, cfg, Options{})
	s.mustLookup(t, imgA.ref, l.digest)
	lv := s.mustLookup(t, imgB.ref, l.digest)
	reg.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if strings.HasPrefix(r.URL.Path, "/v2/team/b/blobs/") {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write([]byte(`{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown"}]}`))
			return true
		}
		return false
	})
	mark := reg.mark()
	checkAllFiles(t, lv, l, 1<<20)
	fromA := reg.since(mark, func(r reqRecord) bool {
		return strings.HasPrefix(r.path, "/v2/team/a/blobs/") && r.status == http.StatusPartialContent
	})
	fromB := reg.since(mark, func(r reqRecord) bool { return strings.HasPrefix(r.path, "/v2/team/b/blobs/") })
	if len(fromA) == 0 || len(fromB) == 0 {
		t.Errorf("%d reads answered by team/a, %d tried at team/b; want team/b tried first, team/a serving", len(fromA), len(fromB))
	}
	if _, ls := s.status(t, l.digest); ls == nil || ls.ReadErrors != 0 || len(ls.Refs) != 2 {
		t.Errorf("status %+v, want 2 refs and no read errors", ls)
	}
}

// TestSequentialReadAhead: reading on from where the previous read ended
// fetches the next span with the same request, so the read after it asks
// the registry for nothing.
func TestSequentialReadAhead(t *testing.T) {
	reg := newTestRegistry(t)
	l := stdLayer(t, 42, 600, 100)
	s, img, z := servedFromLocal(t, reg, l, nil, Options{})
	lv := s.mustLookup(t, img.ref, l.digest)
	c, err := lv.Content()
	if err != nil {
		t.Fatal(err)
	}
	x := z.openIndex(t)
	i := entryIndex(t, c, "data/random.bin")
	m := c.Entries()[i]
	want, _ := l.content("data/random.bin")
	first := x.SpanOf(m.UncompressedOffset)
	if x.SpanOf(m.UncompressedOffset+m.UncompressedSize-1)-first < 4 {
		t.Fatal("the file must cover at least 5 spans")
	}
	read := func(span ztoc.SpanID) []reqRecord {
		t.Helper()
		u0, _ := x.SpanUncompressedRange(span)
		off := max(u0-m.UncompressedOffset, 0)
		p := make([]byte, 4096)
		mark := reg.mark()
		if n, err := c.ReadFile(context.Background(), i, p, off); n != len(p) || err != nil {
			t.Fatalf("ReadFile at %d = %d, %v", off, n, err)
		}
		if !bytes.Equal(p, want[off:off+int64(len(p))]) {
			t.Fatalf("ReadFile at %d returned other bytes", off)
		}
		return reg.since(mark, blobGets(l.digest))
	}
	read(first + 1) // not sequential yet: no read-ahead
	cachedSpan := func(id ztoc.SpanID) bool { return s.anyLayer(l.digest).spans.Present(int(id)) }
	if cachedSpan(first + 3) {
		t.Fatalf("span %d cached before any read-ahead", first+3)
	}
	read(first + 2) // sequential: span first+3 comes in the background
	for deadline := time.Now().Add(10 * time.Second); !cachedSpan(first + 3); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("span %d not fetched ahead", first+3)
		}
	}
	if gets := read(first + 3); len(gets) != 0 {
		t.Errorf("the read of span %d, fetched ahead, sent %d requests, want 0", first+3, len(gets))
	}
}
