package remote

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containers/image/v5/docker/reference"
)

// The tests in this file use fake transports: each fault they inject (a
// truncated body, a reset connection, a storage host rejecting an expired
// signature, a server mangling multipart answers) cannot be produced on
// demand by a real registry.

const testRepo = "registry.test/ns/app"

func TestReadRangesMultipartAnswers(t *testing.T) {
	content := testContent(10000)
	ranges := []Range{{5000, 10}, {100, 50}, {9000, 1000}, {120, 100}, {150, 0}}
	// Merged: 100-219, 5000-5009, 9000-9999.
	merged := []Range{{100, 120}, {5000, 10}, {9000, 1000}}
	tests := []struct {
		name   string
		answer func(req *http.Request, asked []Range) *http.Response
	}{
		{"multipart in order", func(req *http.Request, asked []Range) *http.Response {
			h := http.Header{"Content-Type": {"multipart/byteranges; boundary=XYZ"}}
			return response(req, http.StatusPartialContent, h, multipartBody(content, asked, "XYZ", false))
		}},
		{"multipart out of order, sloppy whitespace", func(req *http.Request, asked []Range) *http.Response {
			rev := []Range{asked[2], asked[0], asked[1]}
			h := http.Header{"Content-Type": {`multipart/byteranges;   boundary="b-1 2"`}}
			return response(req, http.StatusPartialContent, h, multipartBody(content, rev, "b-1 2", true))
		}},
		{"multipart with coalesced parts", func(req *http.Request, asked []Range) *http.Response {
			parts := []Range{{9000, 1000}, {90, 5000 - 90 + 10}} // one part spans two ranges and a gap
			h := http.Header{"Content-Type": {"multipart/byteranges; boundary=Q"}}
			return response(req, http.StatusPartialContent, h, multipartBody(content, parts, "Q", false))
		}},
		{"single 206 covering everything", func(req *http.Request, asked []Range) *http.Response {
			return singleRange(req, content, Range{0, int64(len(content))})
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var requests counter
			var headers []string
			var mu sync.Mutex
			rt := roundTripFunc(func(req *http.Request) (*http.Response, error) {
				requests.inc("all")
				mu.Lock()
				headers = append(headers, req.Header.Get("Range"))
				mu.Unlock()
				return tc.answer(req, parseRangeHeader(t, req.Header.Get("Range"))), nil
			})
			c := newFakeClient(t, rt, newFakeClock(), nil)
			got, err := newBlob(t, c, testRepo, content).ReadRanges(context.Background(), ranges)
			if err != nil {
				t.Fatalf("ReadRanges: %v", err)
			}
			checkRanges(t, content, ranges, got)
			if n := requests.get("all"); n != 1 {
				t.Errorf("requests = %d, want 1", n)
			}
			if want := rangeHeader(toSpans(merged)); headers[0] != want {
				t.Errorf("Range header = %q, want %q", headers[0], want)
			}
			if s := c.Stats(); s.BlobRangeBytes == 0 || s.Retries != 0 || s.MultiRangeFallbacks != 0 {
				t.Errorf("stats = %+v, want BlobRangeBytes > 0, no retries, no fallbacks", s)
			}
		})
	}
}

func toSpans(rs []Range) []*span {
	out := make([]*span, len(rs))
	for i, r := range rs {
		out[i] = &span{Range: r}
	}
	return out
}

// TestReadRangesFullBody: a server ignoring Range. The client learns it in
// two steps (multi-range ignored, then single ranges ignored) and then asks
// for one covering range per call, streaming past the unneeded bytes.
func TestReadRangesFullBody(t *testing.T) {
	content := testContent(50000)
	var requests counter
	rt := roundTripFunc(func(req *http.Request) (*http.Response, error) {
		requests.inc("all")
		return response(req, http.StatusOK, nil, content), nil
	})
	c := newFakeClient(t, rt, newFakeClock(), nil)
	b := newBlob(t, c, testRepo, content)
	ranges := []Range{{10, 10}, {20000, 300}, {40000, 5}}
	for i, wantRequests := range []int{1, 3, 1, 1} {
		before := requests.get("all")
		got, err := b.ReadRanges(context.Background(), ranges)
		if err != nil {
			t.Fatalf("call %d: ReadRanges: %v", i, err)
		}
		checkRanges(t, content, ranges, got)
		if n := requests.get("all") - before; n != wantRequests {
			t.Errorf("call %d: requests = %d, want %d", i, n, wantRequests)
		}
	}
	if s := c.Stats(); s.BlobFullBytes == 0 || s.BlobRangeBytes != 0 {
		t.Errorf("stats = %+v, want only full-body bytes", s)
	}
}

func TestReadRangesRetries(t *testing.T) {
	content := testContent(4096)
	r := Range{1000, 2000}
	reset := &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}
	truncatedAnswer := func(req *http.Request) *http.Response {
		resp := singleRange(req, content, r)
		resp.Body = io.NopCloser(bytes.NewReader(content[r.Offset : r.Offset+500]))
		return resp // Content-Length promises 2000 bytes
	}
	tests := []struct {
		name         string
		failures     int // answers before a good one (-1: always)
		fail         func(req *http.Request) (*http.Response, error)
		wantErr      error
		wantRequests int
		wantSleeps   []time.Duration // exact sleeps, when deterministic
	}{
		{"503 burst", 3, func(req *http.Request) (*http.Response, error) {
			return response(req, http.StatusServiceUnavailable, nil, nil), nil
		}, nil, 4, nil},
		{"500 forever", -1, func(req *http.Request) (*http.Response, error) {
			return response(req, http.StatusInternalServerError, nil, []byte(`{"errors":[{"code":"UNKNOWN","message":"boom"}]}`)), nil
		}, errHTTP, 5, nil},
		{"connection reset", 2, func(*http.Request) (*http.Response, error) { return nil, reset }, nil, 3, nil},
		{"truncated once", 1, func(req *http.Request) (*http.Response, error) { return truncatedAnswer(req), nil }, nil, 2, nil},
		{"truncated forever", -1, func(req *http.Request) (*http.Response, error) { return truncatedAnswer(req), nil }, ErrTruncated, 5, nil},
		{"429 Retry-After", 1, func(req *http.Request) (*http.Response, error) {
			return response(req, http.StatusTooManyRequests, http.Header{"Retry-After": {"1"}}, nil), nil
		}, nil, 2, []time.Duration{time.Second}},
		{"429 Retry-After capped", 1, func(req *http.Request) (*http.Response, error) {
			return response(req, http.StatusTooManyRequests, http.Header{"Retry-After": {"3600"}}, nil), nil
		}, nil, 2, []time.Duration{time.Minute}},
		{"404 is final", -1, func(req *http.Request) (*http.Response, error) {
			return response(req, http.StatusNotFound, nil, []byte(`{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry"}]}`)), nil
		}, ErrNotFound, 1, nil},
		{"401 is final", -1, func(req *http.Request) (*http.Response, error) {
			return response(req, http.StatusUnauthorized, nil, nil), nil
		}, ErrUnauthorized, 1, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var requests counter
			rt := roundTripFunc(func(req *http.Request) (*http.Response, error) {
				n := requests.inc("all")
				if tc.failures < 0 || n <= tc.failures {
					return tc.fail(req)
				}
				return singleRange(req, content, r), nil
			})
			clock := newFakeClock()
			c := newFakeClient(t, rt, clock, nil)
			got, err := newBlob(t, c, testRepo, content).ReadRanges(context.Background(), []Range{r})
			if n := requests.get("all"); n != tc.wantRequests {
				t.Errorf("requests = %d, want %d", n, tc.wantRequests)
			}
			if tc.wantSleeps != nil && fmt.Sprint(clock.Sleeps()) != fmt.Sprint(tc.wantSleeps) {
				t.Errorf("sleeps = %v, want %v", clock.Sleeps(), tc.wantSleeps)
			}
			if s := c.Stats(); s.Retries != int64(tc.wantRequests-1) {
				t.Errorf("Stats().Retries = %d, want %d", s.Retries, tc.wantRequests-1)
			}
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("ReadRanges: %v", err)
				}
				checkRanges(t, content, []Range{r}, got)
				return
			}
			var herr *Error
			switch {
			case err == nil:
				t.Fatalf("ReadRanges succeeded, want error %v", tc.wantErr)
			case tc.wantErr == errHTTP:
				if !errors.As(err, &herr) {
					t.Fatalf("ReadRanges error %v, want an *Error", err)
				}
			case !errors.Is(err, tc.wantErr):
				t.Fatalf("ReadRanges error %v, want %v", err, tc.wantErr)
			}
			if s := c.Stats(); s.Errors != 1 && !errors.Is(err, ErrNotFound) {
				t.Errorf("Stats().Errors = %d, want 1", s.Errors)
			}
		})
	}
}

// errHTTP in a test table means "any *Error".
var errHTTP = errors.New("an *Error")

func TestErrorBodyParsedAndRedacted(t *testing.T) {
	rt := roundTripFunc(func(req *http.Request) (*http.Response, error) {
		if req.URL.Host == "registry.test" {
			h := http.Header{"Location": {"https://storage.test/blob?X-Amz-Signature=secret123"}}
			return response(req, http.StatusTemporaryRedirect, h, nil), nil
		}
		return response(req, http.StatusForbidden, nil, []byte(`{"errors":[{"code":"DENIED","message":"nope"}]}`)), nil
	})
	c := newFakeClient(t, rt, newFakeClock(), nil)
	_, err := newBlob(t, c, testRepo, []byte("abc")).ReadRanges(context.Background(), []Range{{0, 2}})
	if !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("ReadRanges error = %v, want ErrUnauthorized", err)
	}
	if strings.Contains(err.Error(), "secret123") {
		t.Errorf("error %q leaks the signed query", err)
	}
	var herr *Error
	if !errors.As(err, &herr) || len(herr.Details) != 1 || herr.Details[0].Code != "DENIED" || herr.URL != "https://storage.test/blob?REDACTED" {
		t.Errorf("error detail = %+v, want DENIED at https://storage.test/blob?REDACTED", herr)
	}
}

// TestMultiRangeFallback: registries that refuse multi-range requests are
// switched to single ranges, once, and remembered.
func TestMultiRangeFallback(t *testing.T) {
	content := testContent(8192)
	ranges := []Range{{0, 10}, {1000, 10}, {5000, 100}}
	tests := []struct {
		name        string
		refuse      func(req *http.Request, asked []Range) *http.Response
		wantSingles int // over two calls
	}{
		{"416", func(req *http.Request, _ []Range) *http.Response {
			return response(req, http.StatusRequestedRangeNotSatisfiable, nil, nil)
		}, 6},
		{"400", func(req *http.Request, _ []Range) *http.Response {
			return response(req, http.StatusBadRequest, nil, nil)
		}, 6},
		{"multipart missing parts", func(req *http.Request, asked []Range) *http.Response {
			// The part that did arrive is kept: 2 singles, then 3.
			h := http.Header{"Content-Type": {"multipart/byteranges; boundary=Z"}}
			return response(req, http.StatusPartialContent, h, multipartBody(content, asked[:1], "Z", false))
		}, 5},
		{"multipart part without Content-Range", func(req *http.Request, asked []Range) *http.Response {
			h := http.Header{"Content-Type": {"multipart/byteranges; boundary=Z"}}
			return response(req, http.StatusPartialContent, h, []byte("--Z\r\nContent-Type: x\r\n\r\nabc\r\n--Z--\r\n"))
		}, 6},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var requests counter
			rt := roundTripFunc(func(req *http.Request) (*http.Response, error) {
				asked := parseRangeHeader(t, req.Header.Get("Range"))
				if len(asked) > 1 {
					requests.inc("multi")
					return tc.refuse(req, asked), nil
				}
				requests.inc("single")
				return singleRange(req, content, asked[0]), nil
			})
			c := newFakeClient(t, rt, newFakeClock(), nil)
			b := newBlob(t, c, testRepo, content)
			for call := 0; call < 2; call++ {
				got, err := b.ReadRanges(context.Background(), ranges)
				if err != nil {
					t.Fatalf("call %d: ReadRanges: %v", call, err)
				}
				checkRanges(t, content, ranges, got)
			}
			if m, s := requests.get("multi"), requests.get("single"); m != 1 || s != tc.wantSingles {
				t.Errorf("requests: multi %d single %d, want 1 and %d", m, s, tc.wantSingles)
			}
			if s := c.Stats(); s.MultiRangeFallbacks != 1 || s.Retries != 0 || s.Errors != 0 {
				t.Errorf("stats = %+v, want 1 fallback, no retries, no errors", s)
			}
		})
	}
}

// TestPartialMultipartRetriesMissing: a multipart answer cut inside its
// second part; the retry asks only for what is missing.
func TestPartialMultipartRetriesMissing(t *testing.T) {
	content := testContent(8192)
	ranges := []Range{{0, 100}, {4000, 1000}}
	var headers []string
	rt := roundTripFunc(func(req *http.Request) (*http.Response, error) {
		headers = append(headers, req.Header.Get("Range"))
		asked := parseRangeHeader(t, req.Header.Get("Range"))
		if len(asked) == 1 {
			return singleRange(req, content, asked[0]), nil
		}
		body := multipartBody(content, asked, "B", false)
		h := http.Header{"Content-Type": {"multipart/byteranges; boundary=B"}}
		resp := response(req, http.StatusPartialContent, h, body)
		resp.Body = io.NopCloser(bytes.NewReader(body[:len(body)-600]))
		return resp, nil
	})
	c := newFakeClient(t, rt, newFakeClock(), nil)
	got, err := newBlob(t, c, testRepo, content).ReadRanges(context.Background(), ranges)
	if err != nil {
		t.Fatalf("ReadRanges: %v", err)
	}
	checkRanges(t, content, ranges, got)
	want := []string{"bytes=0-99,4000-4999", "bytes=4000-4999"}
	if fmt.Sprint(headers) != fmt.Sprint(want) {
		t.Errorf("Range headers = %q, want %q", headers, want)
	}
}

// storage is a fake registry + object storage pair: the registry redirects
// blob GETs to signed storage URLs; the storage host rejects signatures
// older than its "expired" generation.
type storage struct {
	t         *testing.T
	content   []byte
	mu        sync.Mutex
	gen       int // signature generation handed out by the registry
	minGen    int // storage rejects signatures below this
	requests  counter
	authSeen  map[string][]string // host -> Authorization values
	rejectAll bool
	rejectMul bool // storage answers 400 to multi-range requests (like GCS)
}

func (s *storage) RoundTrip(req *http.Request) (*http.Response, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.authSeen == nil {
		s.authSeen = map[string][]string{}
	}
	s.authSeen[req.URL.Host] = append(s.authSeen[req.URL.Host], req.Header.Get("Authorization"))
	s.requests.inc(req.URL.Host)
	switch req.URL.Host {
	case "registry.test":
		s.gen++
		loc := fmt.Sprintf("https://storage.test/data/blob?sig=%d&X-Amz-Signature=secret", s.gen)
		return response(req, http.StatusTemporaryRedirect, http.Header{"Location": {loc}}, nil), nil
	case "storage.test":
		var gen int
		fmt.Sscanf(req.URL.Query().Get("sig"), "%d", &gen)
		if s.rejectAll || gen < s.minGen {
			return response(req, http.StatusForbidden, nil, []byte("<Error><Code>AccessDenied</Code></Error>")), nil
		}
		asked := parseRangeHeader(s.t, req.Header.Get("Range"))
		if len(asked) > 1 {
			if s.rejectMul {
				return response(req, http.StatusBadRequest, nil, nil), nil
			}
			h := http.Header{"Content-Type": {"multipart/byteranges; boundary=S"}}
			return response(req, http.StatusPartialContent, h, multipartBody(s.content, asked, "S", false)), nil
		}
		return singleRange(req, s.content, asked[0]), nil
	}
	return nil, fmt.Errorf("unexpected host %s", req.URL.Host)
}

// leakyAuth adds a bearer token to every request, whatever the host.
type leakyAuth struct{ base http.RoundTripper }

func (a leakyAuth) RoundTrip(req *http.Request) (*http.Response, error) {
	r := req.Clone(req.Context())
	r.Header.Set("Authorization", "Bearer registry-token")
	return a.base.RoundTrip(r)
}

func (leakyAuth) EnsureFresh(context.Context, time.Duration) error { return nil }

func TestRedirects(t *testing.T) {
	content := testContent(1 << 16)
	st := &storage{t: t, content: content}
	clock := newFakeClock()
	c := newFakeClient(t, st, clock, func(o *Options) {
		// An Auth that would add its header to any host: only the client's
		// routing keeps it away from the storage host.
		o.Auth = func(_ reference.Named, _ []string, base http.RoundTripper) (Auth, error) {
			return leakyAuth{base: base}, nil
		}
	})
	b := newBlob(t, c, testRepo, content)
	read := func(step string, ranges ...Range) {
		t.Helper()
		got, err := b.ReadRanges(context.Background(), ranges)
		if err != nil {
			t.Fatalf("%s: ReadRanges: %v", step, err)
		}
		checkRanges(t, content, ranges, got)
	}
	check := func(step string, wantRegistry, wantStorage int, wantReResolves int64) {
		t.Helper()
		if r, s := st.requests.get("registry.test"), st.requests.get("storage.test"); r != wantRegistry || s != wantStorage {
			t.Errorf("%s: registry requests %d, storage requests %d; want %d and %d", step, r, s, wantRegistry, wantStorage)
		}
		if got := c.Stats().RedirectReResolves; got != wantReResolves {
			t.Errorf("%s: RedirectReResolves = %d, want %d", step, got, wantReResolves)
		}
	}

	for i := 0; i < 10; i++ {
		read("cache reuse", Range{int64(i) * 1000, 500})
	}
	check("10 reads", 1, 10, 0)

	st.mu.Lock()
	st.minGen = 2 // the first signature expired early
	st.mu.Unlock()
	read("after 403", Range{7, 7})
	check("403 from storage", 2, 12, 1)

	clock.Advance(16 * time.Minute)
	read("after TTL", Range{9, 9})
	check("TTL expired", 3, 13, 2)

	read("multi-range", Range{0, 10}, Range{30000, 10})
	check("multi-range via cache", 3, 14, 2)

	for host, values := range st.authSeen {
		for _, v := range values {
			switch {
			case host == "storage.test" && v != "":
				t.Errorf("storage host got Authorization %q, want none", v)
			case host == "registry.test" && v != "Bearer registry-token":
				t.Errorf("registry host got Authorization %q, want the token", v)
			}
		}
	}
	if s := c.Stats(); s.Redirects != 3 {
		t.Errorf("Stats().Redirects = %d, want 3", s.Redirects)
	}
}

// TestRedirectStorageRejectsMultiRange: a GCS-like storage host answers 400
// to multi-range requests; the client first suspects an expired signature
// (re-resolves once), then falls back to single ranges via the cached URL.
func TestRedirectStorageRejectsMultiRange(t *testing.T) {
	content := testContent(1 << 15)
	st := &storage{t: t, content: content, rejectMul: true}
	c := newFakeClient(t, st, newFakeClock(), nil)
	b := newBlob(t, c, testRepo, content)
	ranges := []Range{{0, 10}, {2000, 10}, {30000, 10}}
	for call := 0; call < 2; call++ {
		got, err := b.ReadRanges(context.Background(), ranges)
		if err != nil {
			t.Fatalf("call %d: ReadRanges: %v", call, err)
		}
		checkRanges(t, content, ranges, got)
	}
	// Call 1: registry (redirect) -> storage 400 (fresh URL, so no
	// re-resolve) -> fallback: 3 singles via the cache. Call 2: 3 singles.
	if r, s := st.requests.get("registry.test"), st.requests.get("storage.test"); r != 1 || s != 7 {
		t.Errorf("registry requests %d, storage requests %d; want 1 and 7", r, s)
	}
	if s := c.Stats(); s.MultiRangeFallbacks != 1 {
		t.Errorf("Stats().MultiRangeFallbacks = %d, want 1", s.MultiRangeFallbacks)
	}
}

// blockingClock sleeps for real until ctx is done, announcing each sleep.
type blockingClock struct{ sleeping chan struct{} }

func (blockingClock) Now() time.Time { return time.Now() }

func (c blockingClock) Sleep(ctx context.Context, d time.Duration) error {
	c.sleeping <- struct{}{}
	<-ctx.Done()
	return ctx.Err()
}

func TestCancelDuringRetry(t *testing.T) {
	var requests counter
	rt := roundTripFunc(func(req *http.Request) (*http.Response, error) {
		requests.inc("all")
		return response(req, http.StatusBadGateway, nil, nil), nil
	})
	clock := blockingClock{sleeping: make(chan struct{}, 1)}
	c, err := NewClient(Options{Transport: rt, Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	b := newBlob(t, c, testRepo, []byte("0123456789"))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := b.ReadRanges(ctx, []Range{{0, 5}})
		done <- err
	}()
	<-clock.sleeping
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("ReadRanges error = %v, want context.Canceled", err)
		}
		var herr *Error
		if !errors.As(err, &herr) || herr.StatusCode != http.StatusBadGateway {
			t.Errorf("ReadRanges error = %v, want it to carry the last 502", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("ReadRanges did not return after cancel")
	}
	if n := requests.get("all"); n != 1 {
		t.Errorf("requests = %d, want 1", n)
	}
}

// stallBody delivers data, then blocks until ctx is done (a stalled
// connection).
type stallBody struct {
	data []byte
	ctx  context.Context
}

func (s *stallBody) Read(p []byte) (int, error) {
	if len(s.data) > 0 {
		n := copy(p, s.data)
		s.data = s.data[n:]
		return n, nil
	}
	<-s.ctx.Done()
	return 0, s.ctx.Err()
}

func (s *stallBody) Close() error { return nil }

// brokenBody delivers data, then fails with err.
type brokenBody struct {
	data []byte
	err  error
}

func (b *brokenBody) Read(p []byte) (int, error) {
	if len(b.data) > 0 {
		n := copy(p, b.data)
		b.data = b.data[n:]
		return n, nil
	}
	return 0, b.err
}

func (b *brokenBody) Close() error { return nil }

func TestOpenResumes(t *testing.T) {
	content := testContent(1 << 20)
	reset := &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}
	type step struct {
		wantRange string
		answer    func(req *http.Request) *http.Response
	}
	full := func(req *http.Request) *http.Response { return response(req, http.StatusOK, nil, content) }
	from := func(off int64) func(req *http.Request) *http.Response {
		return func(req *http.Request) *http.Response {
			return singleRange(req, content, Range{off, int64(len(content)) - off})
		}
	}
	tests := []struct {
		name    string
		steps   []step
		mod     func(*Options)
		wantErr error
	}{
		{"reset then truncated", []step{
			{"", func(req *http.Request) *http.Response {
				resp := full(req)
				resp.Body = &brokenBody{data: content[:300000], err: reset}
				return resp
			}},
			{"bytes=300000-", func(req *http.Request) *http.Response {
				resp := from(300000)(req)
				resp.Body = io.NopCloser(bytes.NewReader(content[300000:700000]))
				return resp
			}},
			{"bytes=700000-", from(700000)},
		}, nil, nil},
		{"resume answered with the whole blob", []step{
			{"", func(req *http.Request) *http.Response {
				resp := full(req)
				resp.Body = &brokenBody{data: content[:12345], err: io.ErrUnexpectedEOF}
				return resp
			}},
			{"bytes=12345-", full},
		}, nil, nil},
		{"stalled connection", []step{
			{"", func(req *http.Request) *http.Response {
				resp := full(req)
				resp.Body = &stallBody{data: content[:1000], ctx: req.Context()}
				return resp
			}},
			{"bytes=1000-", from(1000)},
		}, func(o *Options) { o.IdleTimeout = 300 * time.Millisecond }, nil},
		{"corrupt content", []step{
			{"", func(req *http.Request) *http.Response {
				bad := bytes.Clone(content)
				bad[777] ^= 1
				return response(req, http.StatusOK, nil, bad)
			}},
		}, nil, ErrDigestMismatch},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var mu sync.Mutex
			var i int
			rt := roundTripFunc(func(req *http.Request) (*http.Response, error) {
				mu.Lock()
				defer mu.Unlock()
				if i >= len(tc.steps) {
					return nil, fmt.Errorf("unexpected request %d", i+1)
				}
				st := tc.steps[i]
				i++
				if got := req.Header.Get("Range"); got != st.wantRange {
					t.Errorf("request %d: Range %q, want %q", i, got, st.wantRange)
				}
				return st.answer(req), nil
			})
			c := newFakeClient(t, rt, newFakeClock(), tc.mod)
			rc, err := newBlob(t, c, testRepo, content).Open(context.Background())
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			defer rc.Close()
			got, err := io.ReadAll(rc)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("ReadAll error = %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ReadAll: %v", err)
			}
			if !bytes.Equal(got, content) {
				t.Errorf("ReadAll returned %d bytes differing from the %d-byte content", len(got), len(content))
			}
			if i != len(tc.steps) {
				t.Errorf("requests = %d, want %d", i, len(tc.steps))
			}
			if s := c.Stats(); s.Retries != int64(len(tc.steps)-1) {
				t.Errorf("Stats().Retries = %d, want %d", s.Retries, len(tc.steps)-1)
			}
		})
	}
}

// TestReadRangesStalled: a connection that stops delivering is abandoned
// and retried: before the headers after FirstByteTimeout, in the body after
// IdleTimeout (the other timeout is an hour, so each case proves its own).
func TestReadRangesStalled(t *testing.T) {
	content := testContent(4096)
	r := Range{100, 3000}
	tests := []struct {
		name        string
		first, idle time.Duration
		stall       func(req *http.Request) (*http.Response, error)
	}{
		{"before headers", 300 * time.Millisecond, time.Hour, func(req *http.Request) (*http.Response, error) {
			<-req.Context().Done()
			return nil, req.Context().Err()
		}},
		{"in the body", time.Hour, 300 * time.Millisecond, func(req *http.Request) (*http.Response, error) {
			resp := singleRange(req, content, r)
			resp.Body = &stallBody{data: content[r.Offset : r.Offset+10], ctx: req.Context()}
			return resp, nil
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var requests counter
			rt := roundTripFunc(func(req *http.Request) (*http.Response, error) {
				if requests.inc("all") == 1 {
					return tc.stall(req)
				}
				return singleRange(req, content, r), nil
			})
			c := newFakeClient(t, rt, newFakeClock(), func(o *Options) { o.FirstByteTimeout, o.IdleTimeout = tc.first, tc.idle })
			got, err := newBlob(t, c, testRepo, content).ReadRanges(context.Background(), []Range{r})
			if err != nil {
				t.Fatalf("ReadRanges: %v", err)
			}
			checkRanges(t, content, []Range{r}, got)
			if n, s := requests.get("all"), c.Stats(); n != 2 || s.Retries != 1 {
				t.Errorf("requests = %d, retries = %d; want 2 and 1", n, s.Retries)
			}
		})
	}
}
