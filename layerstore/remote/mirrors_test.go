package remote

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containers/image/v5/docker/reference"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
)

// writeConf writes a registries.conf for the test and returns its path.
func writeConf(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "registries.conf")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestEndpointsFromRegistriesConf: the endpoints of a reference, in order,
// are what containers/image's sysregistriesv2 makes of registries.conf.
func TestEndpointsFromRegistriesConf(t *testing.T) {
	conf := writeConf(t, `
[[registry]]
location = "origin.test"
[[registry.mirror]]
location = "m-all.test"
[[registry.mirror]]
location = "m-digest.test"
pull-from-mirror = "digest-only"
[[registry.mirror]]
location = "m-tag.test/cache"
pull-from-mirror = "tag-only"
insecure = true

[[registry]]
location = "bydigest.test"
mirror-by-digest-only = true
[[registry.mirror]]
location = "m-bydigest.test"

[[registry]]
prefix = "apps.example.com/team"
location = "internal.example.com:5000/mirrors/team"
insecure = true

[[registry]]
prefix = "*.wild.test"
[[registry.mirror]]
location = "m-wild.test/w"

[[registry]]
location = "docker.io"
[[registry.mirror]]
location = "hub-cache.test"

[[registry]]
location = "blocked.test"
blocked = true

[[registry]]
location = "leads-to-blocked.test"
[[registry.mirror]]
location = "blocked.test/mirror"
`)
	c, err := NewClient(Options{RegistriesConf: conf})
	if err != nil {
		t.Fatal(err)
	}
	const d = "sha256:0123456789012345678901234567890123456789012345678901234567890123"
	tests := []struct {
		ref  string
		want []string // ref at the endpoint, " (mirror)", " insecure", "@host" when not the domain
	}{
		{"unlisted.test/a/b:1", []string{"unlisted.test/a/b:1"}},
		{"origin.test/a/b:1", []string{"m-all.test/a/b:1 (mirror)", "m-tag.test/cache/a/b:1 (mirror) insecure", "origin.test/a/b:1"}},
		{"origin.test/a/b@" + d, []string{"m-all.test/a/b@" + d + " (mirror)", "m-digest.test/a/b@" + d + " (mirror)", "origin.test/a/b@" + d}},
		{"bydigest.test/x:1", []string{"bydigest.test/x:1"}},
		{"bydigest.test/x@" + d, []string{"m-bydigest.test/x@" + d + " (mirror)", "bydigest.test/x@" + d}},
		{"apps.example.com/team/web:2", []string{"internal.example.com:5000/mirrors/team/web:2 insecure"}},
		{"apps.example.com/other:2", []string{"apps.example.com/other:2"}},
		{"a.wild.test/img:3", []string{"m-wild.test/w/img:3 (mirror)", "a.wild.test/img:3"}},
		{"docker.io/library/alpine:3", []string{"hub-cache.test/library/alpine:3 (mirror)", "docker.io/library/alpine:3@registry-1.docker.io"}},
		{"leads-to-blocked.test/x:1", []string{"leads-to-blocked.test/x:1"}},
	}
	for _, tc := range tests {
		ref, err := reference.ParseNormalizedNamed(tc.ref)
		if err != nil {
			t.Fatal(err)
		}
		eps, err := c.endpoints(ref)
		if err != nil {
			t.Errorf("endpoints(%s): %v", tc.ref, err)
			continue
		}
		var got []string
		for _, ep := range eps {
			s := ep.ref.String()
			if ep.mirror {
				s += " (mirror)"
			}
			if ep.insecure {
				s += " insecure"
			}
			if ep.host != reference.Domain(ep.ref) {
				s += "@" + ep.host
			}
			got = append(got, s)
		}
		if strings.Join(got, ", ") != strings.Join(tc.want, ", ") {
			t.Errorf("endpoints(%s)\n got %q\nwant %q", tc.ref, got, tc.want)
		}
	}
	_, err = c.endpoints(mustRef(t, "blocked.test/x/y:1"))
	var be *BlockedError
	if !errors.As(err, &be) || !errors.Is(err, ErrBlocked) {
		t.Fatalf("endpoints(blocked.test/...) error = %v, want a BlockedError", err)
	}
	// podman: "registry blocked.test is blocked in <registries.conf> or <registries.conf.d>"
	if want := "registry blocked.test is blocked in " + conf; !strings.HasPrefix(err.Error(), want) {
		t.Errorf("blocked error = %q, want it to start with %q (podman's wording)", err, want)
	}
	if _, err := c.Resolve(context.Background(), mustRef(t, "blocked.test/x/y:1")); !errors.Is(err, ErrBlocked) {
		t.Errorf("Resolve of a blocked image: %v, want ErrBlocked", err)
	}
	if err := c.PushBlob(context.Background(), mustRef(t, "blocked.test/x/y"), digest.FromString("x"), 1, strings.NewReader("x")); !errors.Is(err, ErrBlocked) {
		t.Errorf("PushBlob to a blocked registry: %v, want ErrBlocked", err)
	}
}

// mirrorFault is a switchable fault of a test mirror.
type mirrorFault struct {
	down          atomic.Bool // answer 503 to everything
	ignoreRange   atomic.Bool // drop Range headers: 200 with the whole blob
	badRange      atomic.Bool // shift the answer of range requests by one byte
	corrupt       atomic.Bool // flip the bytes of range answers
	headerDelay   atomic.Int64
	requests      counter // "manifests", "blobs", "ranges", "referrers", "other"
	rangeRequests atomic.Int64
}

func (f *mirrorFault) middleware(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		kind := "other"
		for _, k := range []string{"manifests", "blobs", "referrers"} {
			if strings.Contains(r.URL.Path, "/"+k+"/") {
				kind = k
			}
		}
		if kind == "blobs" && r.Header.Get("Range") != "" {
			kind = "ranges"
		}
		if r.Method == http.MethodGet || r.Method == http.MethodHead { // not the test's pushes
			f.requests.inc(kind)
		}
		if d := time.Duration(f.headerDelay.Load()); d > 0 && kind != "other" {
			select {
			case <-time.After(d):
			case <-r.Context().Done():
				return
			}
		}
		if f.down.Load() {
			http.Error(w, "mirror down", http.StatusServiceUnavailable)
			return
		}
		if kind == "ranges" && f.ignoreRange.Load() {
			r.Header.Del("Range")
		}
		if kind == "ranges" && f.badRange.Load() {
			var a, b int64
			if _, err := fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-%d", &a, &b); err == nil && a > 0 {
				r.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", a-1, b-1))
			}
		}
		if kind == "ranges" && f.corrupt.Load() {
			w = &flippingWriter{ResponseWriter: w}
		}
		h.ServeHTTP(w, r)
	})
}

// flippingWriter inverts every body byte.
type flippingWriter struct{ http.ResponseWriter }

func (f *flippingWriter) Write(b []byte) (int, error) {
	c := make([]byte, len(b))
	for i, x := range b {
		c[i] = ^x
	}
	return f.ResponseWriter.Write(c)
}

// mirrorSetup is an origin and a mirror registry (in-process) holding the
// same image, and a client whose registries.conf lists the mirror.
type mirrorSetup struct {
	origin, mirror *testRegistry
	fault          *mirrorFault
	img            testImage
	ref            reference.Named // at the origin
	client         *Client
	clock          *fakeClock
	logs           *logtest.Hook
}

func newMirrorSetup(t *testing.T, mirrorHasImage bool, mod func(*Options)) *mirrorSetup {
	t.Helper()
	s := &mirrorSetup{fault: &mirrorFault{}, clock: newFakeClock()}
	s.origin = newTestRegistry(t, noReferrersAPI)
	s.mirror = newTestRegistry(t, s.fault.middleware)
	// Layers of 300001 and 300101 bytes.
	s.img = buildImage(t, 300, 2, false, ocispec.Platform{OS: runtime.GOOS, Architecture: runtime.GOARCH}, 0)
	s.ref = mustRef(t, s.origin.host+"/ns/app:v1")
	s.img.push(t, insecureClient(t, s.origin.host), s.ref, "v1")
	if mirrorHasImage {
		s.img.push(t, insecureClient(t, s.mirror.host), mustRef(t, s.mirror.host+"/ns/app:v1"), "v1")
	}
	conf := writeConf(t, fmt.Sprintf(`
[[registry]]
location = %q
insecure = true
[[registry.mirror]]
location = %q
insecure = true
`, s.origin.host, s.mirror.host))
	var logger *logrus.Logger
	logger, s.logs = logtest.NewNullLogger()
	logger.SetLevel(logrus.DebugLevel)
	opts := Options{RegistriesConf: conf, Clock: s.clock, BackoffBase: time.Millisecond, BackoffMax: 4 * time.Millisecond,
		Log: logrus.NewEntry(logger)}
	if mod != nil {
		mod(&opts)
	}
	c, err := NewClient(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	s.client = c
	return s
}

// bigLayer returns a Blob of the image's big layer.
func (s *mirrorSetup) bigLayer(t *testing.T) (*Blob, []byte) {
	t.Helper()
	content := s.img.layers[1]
	b, err := s.client.Blob(s.ref, digest.FromBytes(content), int64(len(content)))
	if err != nil {
		t.Fatal(err)
	}
	return b, content
}

// warned returns the messages logged at warning level or above.
func (s *mirrorSetup) warned() []string {
	var out []string
	for _, e := range s.logs.AllEntries() {
		if e.Level <= logrus.WarnLevel {
			out = append(out, e.Message+" "+fmt.Sprint(e.Data))
		}
	}
	return out
}

// TestMirrorServesEverything: with a healthy mirror holding the image, the
// manifest, config, referrers (tag fallback), small blobs and ranges all come
// from the mirror; the origin sees no manifest or blob request.
func TestMirrorServesEverything(t *testing.T) {
	s := newMirrorSetup(t, true, nil)
	ctx := context.Background()
	img, err := s.client.Resolve(ctx, s.ref)
	if err != nil {
		t.Fatalf("Resolve: %v", err)
	}
	checkImage(t, img, s.img)
	b, content := s.bigLayer(t)
	ranges := []Range{{10, 1000}, {200_000, 5000}}
	got, err := b.ReadRanges(ctx, ranges)
	if err != nil {
		t.Fatalf("ReadRanges: %v", err)
	}
	checkRanges(t, content, ranges, got)
	if want := s.mirror.host + "/ns/app"; b.ServedBy() != want {
		t.Errorf("ServedBy() = %q, want %q", b.ServedBy(), want)
	}
	for _, k := range []string{"GET manifests", "GET blobs"} {
		if n := s.origin.count(k); n != 0 {
			t.Errorf("origin saw %d %q requests, want 0", n, k)
		}
	}
	if n := s.fault.requests.get("ranges"); n == 0 {
		t.Error("the mirror saw no range request")
	}
	if w := s.warned(); len(w) != 0 {
		t.Errorf("warnings with a healthy mirror: %q", w)
	}
	// No referrers at the mirror (not every mirror proxies them): the origin
	// has the last word, here through its referrers tag.
	if _, err := s.client.Referrers(ctx, s.ref, img.ManifestDigest, ""); err != nil {
		t.Fatalf("Referrers: %v", err)
	}
	if m, o := s.fault.requests.get("referrers"), s.origin.count("GET manifests"); m != 1 || o != 1 {
		t.Errorf("Referrers asked the mirror's API %d times and the origin's referrers tag %d times, want 1 and 1", m, o)
	}
}

// TestMirrorDownFallsBack: a failing mirror is skipped for the request and
// left out for MirrorRetryAfter, then tried again.
func TestMirrorDownFallsBack(t *testing.T) {
	s := newMirrorSetup(t, true, nil)
	ctx := context.Background()
	s.fault.down.Store(true)
	if _, err := s.client.Resolve(ctx, s.ref); err != nil {
		t.Fatalf("Resolve with the mirror down: %v", err)
	}
	if n := s.fault.requests.get("manifests"); n != 1 {
		t.Errorf("mirror saw %d manifest requests, want 1 (no retries of a failing mirror)", n)
	}
	b, content := s.bigLayer(t)
	got, err := b.ReadRanges(ctx, []Range{{5000, 100}})
	if err != nil {
		t.Fatalf("ReadRanges with the mirror down: %v", err)
	}
	checkRanges(t, content, []Range{{5000, 100}}, got)
	if n := s.fault.requests.get("ranges"); n != 0 {
		t.Errorf("mirror saw %d range requests while left out, want 0", n)
	}
	if want := s.origin.host + "/ns/app"; b.ServedBy() != want {
		t.Errorf("ServedBy() = %q, want the origin %q", b.ServedBy(), want)
	}
	if w := s.warned(); len(w) != 1 || !strings.Contains(w[0], "mirror failed") || !strings.Contains(w[0], s.mirror.host) {
		t.Errorf("warnings = %q, want one naming the mirror", w)
	}
	if st := s.client.Stats(); st.MirrorFallbacks != 1 || st.Retries != 0 {
		t.Errorf("stats = %+v, want 1 mirror fallback and no retries", st)
	}
	// Back after MirrorRetryAfter.
	s.fault.down.Store(false)
	s.clock.Advance(31 * time.Second)
	if _, err := b.ReadRanges(ctx, []Range{{7000, 100}}); err != nil {
		t.Fatal(err)
	}
	if n := s.fault.requests.get("ranges"); n != 1 || b.ServedBy() != s.mirror.host+"/ns/app" {
		t.Errorf("after MirrorRetryAfter: mirror range requests %d, served by %q; want 1, the mirror", n, b.ServedBy())
	}
}

// TestMirrorWithoutTheImage: a mirror lacking the image is asked once per
// object; the origin serves, with no warning (not found is no failure).
func TestMirrorWithoutTheImage(t *testing.T) {
	s := newMirrorSetup(t, false, nil)
	ctx := context.Background()
	if _, err := s.client.Resolve(ctx, s.ref); err != nil {
		t.Fatalf("Resolve: %v", err)
	}
	b, content := s.bigLayer(t)
	for i := range 3 {
		r := Range{int64(i) * 1000, 100}
		got, err := b.ReadRanges(ctx, []Range{r})
		if err != nil {
			t.Fatal(err)
		}
		checkRanges(t, content, []Range{r}, got)
	}
	if n := s.fault.requests.get("ranges"); n != 1 {
		t.Errorf("mirror saw %d range requests for a blob it does not have, want 1", n)
	}
	if w := s.warned(); len(w) != 0 {
		t.Errorf("warnings = %q, want none for objects a mirror does not have", w)
	}
}

// TestMirrorRangeAnswers: a mirror that answers ranges wrongly is skipped for
// the blob (the origin serves exact bytes); one answering with the whole blob
// serves the reads for MirrorWarmup (a pull-through cache warming up), then
// is skipped.
func TestMirrorRangeAnswers(t *testing.T) {
	ctx := context.Background()
	r := Range{100_000, 4000}
	t.Run("wrong Content-Range", func(t *testing.T) {
		s := newMirrorSetup(t, true, nil)
		s.fault.badRange.Store(true)
		b, content := s.bigLayer(t)
		got, err := b.ReadRanges(ctx, []Range{r})
		if err != nil {
			t.Fatal(err)
		}
		checkRanges(t, content, []Range{r}, got)
		if b.ServedBy() != s.origin.host+"/ns/app" || s.origin.count("GET blobs") == 0 {
			t.Errorf("served by %q, origin blob requests %d; want the origin", b.ServedBy(), s.origin.count("GET blobs"))
		}
		if w := s.warned(); len(w) != 1 || !strings.Contains(w[0], "does not cover it") {
			t.Errorf("warnings = %q, want one about the answer not covering the range", w)
		}
	})
	t.Run("whole blob, no warm-up", func(t *testing.T) {
		s := newMirrorSetup(t, true, nil)
		s.fault.ignoreRange.Store(true)
		b, content := s.bigLayer(t)
		for range 2 {
			got, err := b.ReadRanges(ctx, []Range{r})
			if err != nil {
				t.Fatal(err)
			}
			checkRanges(t, content, []Range{r}, got)
		}
		if n := s.fault.requests.get("ranges"); n != 1 {
			t.Errorf("mirror saw %d range requests, want 1 (then skipped for the blob)", n)
		}
		if b.ServedBy() != s.origin.host+"/ns/app" {
			t.Errorf("served by %q, want the origin", b.ServedBy())
		}
		if w := s.warned(); len(w) != 1 || !strings.Contains(w[0], "range requests") {
			t.Errorf("warnings = %q, want one about range requests", w)
		}
	})
	t.Run("whole blob during warm-up", func(t *testing.T) {
		s := newMirrorSetup(t, true, func(o *Options) { o.MirrorWarmup = time.Minute })
		s.fault.ignoreRange.Store(true)
		b, content := s.bigLayer(t)
		for range 2 {
			got, err := b.ReadRanges(ctx, []Range{r})
			if err != nil {
				t.Fatal(err)
			}
			checkRanges(t, content, []Range{r}, got)
			s.clock.Advance(20 * time.Second)
		}
		if b.ServedBy() != s.mirror.host+"/ns/app" || s.origin.count("GET blobs") != 0 {
			t.Errorf("during warm-up: served by %q, origin blob requests %d; want the mirror, 0", b.ServedBy(), s.origin.count("GET blobs"))
		}
		s.clock.Advance(time.Minute)
		got, err := b.ReadRanges(ctx, []Range{r})
		if err != nil {
			t.Fatal(err)
		}
		checkRanges(t, content, []Range{r}, got)
		if b.ServedBy() != s.origin.host+"/ns/app" {
			t.Errorf("after the warm-up: served by %q, want the origin", b.ServedBy())
		}
		// A 206 resets the warm-up: the mirror serves again once it serves ranges.
		s.fault.ignoreRange.Store(false)
		s.clock.Advance(11 * time.Minute) // past MirrorSkipTTL
		if _, err := b.ReadRanges(ctx, []Range{r}); err != nil || b.ServedBy() != s.mirror.host+"/ns/app" {
			t.Errorf("mirror serving ranges again: %v, served by %q; want the mirror", err, b.ServedBy())
		}
	})
}

// TestMirrorSlowFirstByte: a mirror may take MirrorFirstByteTimeout (not
// FirstByteTimeout) to answer, as a pull-through cache fetching a blob
// upstream first; past it, the next endpoint serves.
func TestMirrorSlowFirstByte(t *testing.T) {
	ctx := context.Background()
	r := Range{1000, 1000}
	for _, tc := range []struct {
		name       string
		mirrorWait time.Duration
		wantMirror bool
	}{
		{"tolerated", 5 * time.Second, true},
		{"too slow", 100 * time.Millisecond, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newMirrorSetup(t, true, func(o *Options) {
				o.FirstByteTimeout, o.MirrorFirstByteTimeout = 100*time.Millisecond, tc.mirrorWait
			})
			b, content := s.bigLayer(t)
			s.fault.headerDelay.Store(int64(500 * time.Millisecond))
			got, err := b.ReadRanges(ctx, []Range{r})
			if err != nil {
				t.Fatal(err)
			}
			checkRanges(t, content, []Range{r}, got)
			if gotMirror := b.ServedBy() == s.mirror.host+"/ns/app"; gotMirror != tc.wantMirror {
				t.Errorf("served by %q, want the mirror: %v", b.ServedBy(), tc.wantMirror)
			}
		})
	}
}

// TestMirrorTagOnlyNotForDigests: pull-from-mirror decides per image
// reference; blobs of an image pulled by digest skip a tag-only mirror.
func TestMirrorTagOnlyNotForDigests(t *testing.T) {
	s := newMirrorSetup(t, true, nil)
	conf := writeConf(t, fmt.Sprintf(`
[[registry]]
location = %q
insecure = true
[[registry.mirror]]
location = %q
insecure = true
pull-from-mirror = "tag-only"
`, s.origin.host, s.mirror.host))
	c, err := NewClient(Options{RegistriesConf: conf})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	content := s.img.layers[1]
	for _, tc := range []struct {
		ref  string
		want string
	}{
		{s.origin.host + "/ns/app:v1", s.mirror.host + "/ns/app"},
		{s.origin.host + "/ns/app@" + s.img.digest.String(), s.origin.host + "/ns/app"},
	} {
		b, err := c.Blob(mustRef(t, tc.ref), digest.FromBytes(content), int64(len(content)))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := b.ReadRanges(context.Background(), []Range{{0, 10}}); err != nil {
			t.Fatal(err)
		}
		if b.ServedBy() != tc.want {
			t.Errorf("blob of %s served by %q, want %q", tc.ref, b.ServedBy(), tc.want)
		}
	}
}

// TestRejectLastRead: bytes a mirror served that the caller found wrong
// (checked against the layer's index) make the mirror left out for the
// blob; the next read comes from the origin, exact. Rejecting bytes of the
// origin changes nothing.
func TestRejectLastRead(t *testing.T) {
	s := newMirrorSetup(t, true, nil)
	s.fault.corrupt.Store(true)
	b, content := s.bigLayer(t)
	r := Range{50_000, 2000}
	ctx := context.Background()
	got, err := b.ReadRanges(ctx, []Range{r})
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(got[0], content[r.Offset:r.End()]) || b.ServedBy() != s.mirror.host+"/ns/app" {
		t.Fatalf("the corrupting mirror's answer is exact or came from %q: the fault does not work", b.ServedBy())
	}
	b.RejectLastRead()
	got, err = b.ReadRanges(ctx, []Range{r})
	if err != nil {
		t.Fatal(err)
	}
	checkRanges(t, content, []Range{r}, got)
	if b.ServedBy() != s.origin.host+"/ns/app" {
		t.Errorf("after RejectLastRead: served by %q, want the origin", b.ServedBy())
	}
	if w := s.warned(); len(w) != 1 || !strings.Contains(w[0], "do not match") {
		t.Errorf("warnings = %q, want one about bytes that do not match", w)
	}
	b.RejectLastRead() // the origin's bytes: nothing to leave out
	if _, err := b.ReadRanges(ctx, []Range{r}); err != nil || b.ServedBy() != s.origin.host+"/ns/app" {
		t.Errorf("after rejecting the origin's bytes: %v, served by %q; want the origin still", err, b.ServedBy())
	}
}

// freshAuthFor records EnsureFresh calls per reference and fails them for
// the references in fail.
type freshAuthFor struct {
	anonymous
	ref   string
	calls *counter
	fail  map[string]bool
}

func (f freshAuthFor) EnsureFresh(context.Context, time.Duration) error {
	f.calls.inc(f.ref)
	if f.fail[f.ref] {
		return errors.New("token server down")
	}
	return nil
}

// TestEnsureFreshEveryEndpoint: credentials are refreshed for the mirrors
// and the primary location; one of them failing is no failure.
func TestEnsureFreshEveryEndpoint(t *testing.T) {
	conf := writeConf(t, "[[registry]]\nlocation = \"origin.test\"\n[[registry.mirror]]\nlocation = \"mirror.test\"\n")
	var calls counter
	fail := map[string]bool{}
	c, err := NewClient(Options{RegistriesConf: conf, Auth: func(ref reference.Named, _ []string, base http.RoundTripper) (Auth, error) {
		return freshAuthFor{anonymous: anonymous{base: base}, ref: ref.String(), calls: &calls, fail: fail}, nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ref := mustRef(t, "origin.test/app:1")
	for _, tc := range []struct {
		name    string
		fail    []string
		wantErr bool
	}{
		{"both fine", nil, false},
		{"mirror fails", []string{"mirror.test/app:1"}, false},
		{"origin fails", []string{"origin.test/app:1"}, false},
		{"both fail", []string{"mirror.test/app:1", "origin.test/app:1"}, true},
	} {
		clear(fail)
		for _, f := range tc.fail {
			fail[f] = true
		}
		m0, o0 := calls.get("mirror.test/app:1"), calls.get("origin.test/app:1")
		err := c.EnsureFresh(context.Background(), ref, time.Minute)
		if (err != nil) != tc.wantErr {
			t.Errorf("%s: EnsureFresh = %v, want error %v", tc.name, err, tc.wantErr)
		}
		if calls.get("mirror.test/app:1") != m0+1 || calls.get("origin.test/app:1") != o0+1 {
			t.Errorf("%s: EnsureFresh did not refresh both endpoints once", tc.name)
		}
	}
}

// TestMirrorHungManifest: a mirror that does not answer a manifest request
// within FirstByteTimeout is abandoned for the next endpoint (not after the
// whole RequestTimeout).
func TestMirrorHungManifest(t *testing.T) {
	s := newMirrorSetup(t, true, func(o *Options) {
		o.FirstByteTimeout, o.RequestTimeout = 100*time.Millisecond, time.Hour
	})
	s.fault.headerDelay.Store(int64(3 * time.Second))
	img, err := s.client.Resolve(context.Background(), s.ref)
	if err != nil {
		t.Fatalf("Resolve: %v", err)
	}
	checkImage(t, img, s.img)
	if n := s.origin.count("GET manifests"); n != 1 {
		t.Errorf("the origin saw %d manifest requests, want 1 (the hung mirror abandoned)", n)
	}
	if w := s.warned(); len(w) != 1 || !strings.Contains(w[0], "connection stalled") {
		t.Errorf("warnings = %q, want one about the stalled mirror", w)
	}
}
