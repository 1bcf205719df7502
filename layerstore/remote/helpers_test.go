package remote

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containers/image/v5/docker/reference"
	digest "github.com/opencontainers/go-digest"
)

// roundTripFunc turns a function into an http.RoundTripper. Fakes built on it
// produce faults a real server cannot produce on demand (truncated bodies,
// resets, bursts of 5xx, broken multipart answers, storage hosts that expire
// signed URLs).
type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// fakeClock records sleeps and advances its time by them without waiting.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	sleeps []time.Duration
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Sleep(ctx context.Context, d time.Duration) error {
	c.mu.Lock()
	c.sleeps = append(c.sleeps, d)
	c.now = c.now.Add(d)
	c.mu.Unlock()
	return ctx.Err()
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func (c *fakeClock) Sleeps() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]time.Duration(nil), c.sleeps...)
}

// testContent returns n deterministic pseudo-random bytes.
func testContent(n int) []byte {
	r := rand.New(rand.NewPCG(uint64(n), 42))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.UintN(256))
	}
	return b
}

func mustRef(t testing.TB, s string) reference.Named {
	t.Helper()
	ref, err := reference.ParseNormalizedNamed(s)
	if err != nil {
		t.Fatalf("ParseNormalizedNamed(%q): %v", s, err)
	}
	return ref
}

// newFakeClient returns a client whose every request goes to rt.
func newFakeClient(t testing.TB, rt http.RoundTripper, clock *fakeClock, mod func(*Options)) *Client {
	t.Helper()
	opts := Options{Transport: rt, Clock: clock, BackoffBase: time.Millisecond, BackoffMax: 8 * time.Millisecond}
	if mod != nil {
		mod(&opts)
	}
	c, err := NewClient(opts)
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func newBlob(t testing.TB, c *Client, repo string, content []byte) *Blob {
	t.Helper()
	b, err := c.Blob(mustRef(t, repo), digest.FromBytes(content), int64(len(content)))
	if err != nil {
		t.Fatalf("Blob: %v", err)
	}
	return b
}

// response builds a fake response.
func response(req *http.Request, status int, header http.Header, body []byte) *http.Response {
	if header == nil {
		header = http.Header{}
	}
	return &http.Response{
		StatusCode:    status,
		Status:        fmt.Sprintf("%d %s", status, http.StatusText(status)),
		Header:        header,
		Body:          io.NopCloser(bytes.NewReader(body)),
		ContentLength: int64(len(body)),
		Request:       req,
		Proto:         "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
	}
}

// parseRangeHeader parses "bytes=a-b,c-d" (closed ranges only).
func parseRangeHeader(t testing.TB, v string) []Range {
	t.Helper()
	spec, ok := strings.CutPrefix(v, "bytes=")
	if !ok {
		t.Fatalf("Range %q: no bytes= prefix", v)
	}
	var out []Range
	for _, part := range strings.Split(spec, ",") {
		var a, b int64
		if _, err := fmt.Sscanf(part, "%d-%d", &a, &b); err != nil {
			t.Fatalf("Range %q: %v", v, err)
		}
		out = append(out, Range{Offset: a, Length: b - a + 1})
	}
	return out
}

// singleRange answers a single-range request for content.
func singleRange(req *http.Request, content []byte, r Range) *http.Response {
	h := http.Header{"Content-Range": {fmt.Sprintf("bytes %d-%d/%d", r.Offset, r.End()-1, len(content))}}
	return response(req, http.StatusPartialContent, h, content[r.Offset:r.End()])
}

// multipartBody renders a multipart/byteranges body with parts in the given
// order; sloppy adds a preamble, transport padding after the delimiters,
// lower-case header names and extra spaces inside Content-Range.
func multipartBody(content []byte, ranges []Range, boundary string, sloppy bool) []byte {
	var b bytes.Buffer
	if sloppy {
		b.WriteString("This is a preamble to be ignored.")
	}
	for _, r := range ranges {
		fmt.Fprintf(&b, "\r\n--%s", boundary)
		if sloppy {
			b.WriteString(" \t ")
		}
		b.WriteString("\r\n")
		if sloppy {
			fmt.Fprintf(&b, "content-range:   bytes  %d-%d/%d  \r\ncontent-type: application/octet-stream\r\n\r\n", r.Offset, r.End()-1, len(content))
		} else {
			fmt.Fprintf(&b, "Content-Type: application/octet-stream\r\nContent-Range: bytes %d-%d/%d\r\n\r\n", r.Offset, r.End()-1, len(content))
		}
		b.Write(content[r.Offset:r.End()])
	}
	fmt.Fprintf(&b, "\r\n--%s--\r\n", boundary)
	if sloppy {
		b.WriteString("epilogue\r\n")
	}
	return b.Bytes()
}

// checkRanges compares ReadRanges output with content.
func checkRanges(t testing.TB, content []byte, ranges []Range, got [][]byte) {
	t.Helper()
	if len(got) != len(ranges) {
		t.Fatalf("ReadRanges returned %d slices, want %d", len(got), len(ranges))
	}
	for i, r := range ranges {
		if want := content[r.Offset:r.End()]; !bytes.Equal(got[i], want) {
			t.Errorf("range %d (%s): got %d bytes differing from the content (want %d bytes)", i, r, len(got[i]), len(want))
		}
	}
}

// counter counts requests by a key.
type counter struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *counter) inc(key string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[string]int{}
	}
	c.n[key]++
	return c.n[key]
}

func (c *counter) get(key string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[key]
}
