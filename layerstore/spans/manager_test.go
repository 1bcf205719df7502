package spans

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lazypull/lazypull/layerstore/diskcache"
	"github.com/lazypull/lazypull/layerstore/remote"
)

// testLayout is a layer whose spans are fixed slices of a blob and inflate
// to themselves XORed with 0x5a (so a test can tell inflated bytes from
// compressed ones); digests are sha256 of the slices.
type testLayout struct {
	blob    []byte
	size    int64
	digests [][32]byte
	// panicOn makes Inflate of that span panic (a hostile index).
	panicOn atomic.Int32
}

func newTestLayout(blob []byte, spanSize int64) *testLayout {
	l := &testLayout{blob: blob, size: spanSize}
	l.panicOn.Store(-1)
	for off := int64(0); off < int64(len(blob)); off += spanSize {
		l.digests = append(l.digests, sha256.Sum256(blob[off:min(off+spanSize, int64(len(blob)))]))
	}
	return l
}

func (l *testLayout) NumSpans() int { return len(l.digests) }
func (l *testLayout) CompressedRange(id int) (int64, int64) {
	return int64(id) * l.size, min(int64(id+1)*l.size, int64(len(l.blob)))
}
func (l *testLayout) UncompressedRange(id int) (int64, int64) { return l.CompressedRange(id) }
func (l *testLayout) SpanOf(off int64) int                    { return int(min(off/l.size, int64(len(l.digests)-1))) }
func (l *testLayout) Verify(id int, c []byte) error {
	if sha256.Sum256(c) != l.digests[id] {
		return fmt.Errorf("span %d digest mismatch", id)
	}
	return nil
}
func (l *testLayout) Inflate(id int, c, dst []byte) ([]byte, error) {
	if int(l.panicOn.Load()) == id {
		var x []byte
		_ = x[len(c)+1] // index out of range
	}
	dst = dst[:len(c)]
	for i, b := range c {
		dst[i] = b ^ 0x5a
	}
	return dst, nil
}

// plain returns the uncompressed stream of the layout.
func (l *testLayout) plain() []byte {
	out := make([]byte, len(l.blob))
	for i, b := range l.blob {
		out[i] = b ^ 0x5a
	}
	return out
}

// memSource serves ranges of a blob from memory, counting requests; a test
// may block requests, fail them, or flip bytes (faults a registry cannot
// produce on demand).
type memSource struct {
	blob     []byte
	requests atomic.Int64
	bytes    atomic.Int64
	// gate, when not nil, is waited on by every request.
	gate chan struct{}
	// started receives a value when a request begins (non-blocking).
	started chan remote.Range
	// corrupt counts down corrupted answers.
	corrupt atomic.Int64
	fail    atomic.Pointer[error]
}

func (s *memSource) ReadRanges(ctx context.Context, ranges []remote.Range) ([][]byte, error) {
	s.requests.Add(1)
	if s.started != nil {
		select {
		case s.started <- ranges[0]:
		default:
		}
	}
	if s.gate != nil {
		select {
		case <-s.gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if e := s.fail.Load(); e != nil {
		return nil, *e
	}
	out := make([][]byte, len(ranges))
	for i, r := range ranges {
		b := append([]byte(nil), s.blob[r.Offset:r.End()]...)
		if s.corrupt.Add(-1) >= 0 {
			b[0] ^= 0xff
		}
		s.bytes.Add(int64(len(b)))
		out[i] = b
	}
	return out, nil
}

type fixture struct {
	layout *testLayout
	src    *memSource
	cache  *diskcache.Cache
	sched  *Scheduler
	m      *Manager
	bad    chan string
}

func newFixture(t *testing.T, spans int, spanSize int64, cacheMax int64, mod func(*Options)) *fixture {
	t.Helper()
	blob := make([]byte, int64(spans)*spanSize-spanSize/3) // a short last span
	r := rand.New(rand.NewPCG(1, 2))
	for i := range blob {
		blob[i] = byte(r.Uint32())
	}
	cache, err := diskcache.Open(t.TempDir(), cacheMax)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{layout: newTestLayout(blob, spanSize), src: &memSource{blob: blob}, cache: cache, bad: make(chan string, 1)}
	f.sched = NewScheduler(SchedulerOptions{Quiet: time.Millisecond})
	o := Options{
		Layout:    f.layout,
		Sources:   func() []Source { return []Source{f.src} },
		Cache:     cache,
		Group:     "layer",
		Scheduler: f.sched,
		OnBad:     func(reason string) { f.bad <- reason },
	}
	if mod != nil {
		mod(&o)
	}
	f.m = New(o)
	t.Cleanup(func() {
		f.m.Close()
		f.sched.Close()
	})
	return f
}

func TestReadAtExactAndOneRequestPerRun(t *testing.T) {
	f := newFixture(t, 8, 4096, 0, func(o *Options) { o.ReadAheadBytes = -1 })
	want := f.layout.plain()
	// Spans 2..4 in one read: one request.
	buf := make([]byte, 3*4096-100)
	n, err := f.m.ReadAt(context.Background(), buf, 2*4096+50)
	if err != nil || n != len(buf) {
		t.Fatalf("ReadAt = %d, %v", n, err)
	}
	if !bytes.Equal(buf, want[2*4096+50:2*4096+50+len(buf)]) {
		t.Fatal("ReadAt returned wrong bytes")
	}
	if got := f.src.requests.Load(); got != 1 {
		t.Errorf("requests = %d, want 1 for one run of spans", got)
	}
	// The whole stream, then past the end.
	all := make([]byte, len(want)+10)
	n, err = f.m.ReadAt(context.Background(), all, 0)
	if n != len(want) || !errors.Is(err, io.EOF) || !bytes.Equal(all[:n], want) {
		t.Fatalf("ReadAt(all) = %d, %v; want %d, EOF, exact bytes", n, err, len(want))
	}
	if got := f.src.requests.Load(); got != 2 {
		t.Errorf("requests = %d, want 2 (the runs 0-1 and 5-7 were missing: one request with two ranges)", got)
	}
	if _, err := f.m.ReadAt(context.Background(), buf, int64(len(want))); !errors.Is(err, io.EOF) {
		t.Errorf("ReadAt(past end) = %v, want EOF", err)
	}
	// Everything is on disk now, inflated: reads come from there after the
	// in-memory copies are committed.
	waitFor(t, "inflated spans committed", func() bool {
		n, _ := f.cache.GroupUsage("layer")
		return n == 16
	})
	before := f.m.Stats().DiskReads
	n, err = f.m.ReadAt(context.Background(), all, 0)
	if n != len(want) || !bytes.Equal(all[:n], want) {
		t.Fatalf("cached ReadAt = %d, %v", n, err)
	}
	if f.m.Stats().DiskReads-before != 8 || f.src.requests.Load() != 2 || f.m.Stats().Inflations != 8 {
		t.Errorf("cached read: %+v, %d requests; want 8 disk reads, no new request, each span inflated once", f.m.Stats(), f.src.requests.Load())
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestConcurrentReadersOneFetch(t *testing.T) {
	f := newFixture(t, 4, 8192, 0, func(o *Options) { o.ReadAheadBytes = -1 })
	f.src.gate = make(chan struct{})
	want := f.layout.plain()
	var wg sync.WaitGroup
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 100)
			if _, err := f.m.ReadAt(context.Background(), buf, 8192+int64(i)*10); err != nil {
				t.Error(err)
				return
			}
			if !bytes.Equal(buf, want[8192+i*10:8192+i*10+100]) {
				t.Error("wrong bytes")
			}
		}()
	}
	time.Sleep(50 * time.Millisecond)
	close(f.src.gate)
	wg.Wait()
	if got := f.src.requests.Load(); got != 1 {
		t.Errorf("requests = %d, want 1", got)
	}
	if got := f.m.Stats().Inflations; got != 1 {
		t.Errorf("inflations = %d, want 1", got)
	}
}

// TestInterruptedReaderDoesNotFailOthers: the reader whose read started the
// fetch (and the inflation) is interrupted; the others get their bytes.
func TestInterruptedReaderDoesNotFailOthers(t *testing.T) {
	f := newFixture(t, 4, 8192, 0, func(o *Options) { o.ReadAheadBytes = -1 })
	f.src.gate = make(chan struct{})
	f.src.started = make(chan remote.Range, 1)
	want := f.layout.plain()
	ctx, cancel := context.WithCancel(context.Background())
	firstDone := make(chan error, 1)
	go func() {
		_, err := f.m.ReadAt(ctx, make([]byte, 100), 0)
		firstDone <- err
	}()
	<-f.src.started // the first reader owns the claim
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 100)
			_, err := f.m.ReadAt(context.Background(), buf, int64(i))
			if err == nil && !bytes.Equal(buf, want[i:i+100]) {
				err = errors.New("wrong bytes")
			}
			errs <- err
		}()
	}
	time.Sleep(20 * time.Millisecond)
	cancel()
	if err := <-firstDone; !errors.Is(err, context.Canceled) {
		t.Errorf("interrupted reader: %v, want context.Canceled", err)
	}
	close(f.src.gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("another reader failed: %v", err)
		}
	}
	if got := f.src.requests.Load(); got != 1 {
		t.Errorf("requests = %d, want 1", got)
	}
}

func TestDigestMismatchRefetchThenBad(t *testing.T) {
	f := newFixture(t, 4, 4096, 0, func(o *Options) { o.ReadAheadBytes = -1 })
	want := f.layout.plain()
	// One bad answer: a transfer problem, fetched again.
	f.src.corrupt.Store(1)
	buf := make([]byte, 10)
	if _, err := f.m.ReadAt(context.Background(), buf, 0); err != nil || !bytes.Equal(buf, want[:10]) {
		t.Fatalf("ReadAt after one corrupt answer = %v", err)
	}
	if f.m.Bad() != "" {
		t.Fatal("one corrupt answer made the layer bad")
	}
	// Two: the registry's blob is not what the index says.
	f.src.corrupt.Store(2)
	if _, err := f.m.ReadAt(context.Background(), buf, 3*4096); !errors.Is(err, ErrLayerBad) {
		t.Fatalf("ReadAt after two corrupt answers = %v, want ErrLayerBad", err)
	}
	select {
	case <-f.bad:
	case <-time.After(5 * time.Second):
		t.Fatal("OnBad not called")
	}
	// Every read fails from now on, cached spans included.
	if _, err := f.m.ReadAt(context.Background(), buf, 0); !errors.Is(err, ErrLayerBad) {
		t.Errorf("ReadAt of a cached span of a bad layer = %v, want ErrLayerBad", err)
	}
}

func TestEvictedSpansAreFetchedAgain(t *testing.T) {
	// Room for about three spans (compressed and inflated count both).
	f := newFixture(t, 8, 4096, 3*4096, func(o *Options) { o.ReadAheadBytes = -1 })
	want := f.layout.plain()
	for round := 0; round < 3; round++ {
		for off := int64(0); off < int64(len(want)); off += 1000 {
			buf := make([]byte, 1000)
			n, err := f.m.ReadAt(context.Background(), buf, off)
			if err != nil && !errors.Is(err, io.EOF) {
				t.Fatal(err)
			}
			if !bytes.Equal(buf[:n], want[off:off+int64(n)]) {
				t.Fatalf("round %d: wrong bytes at %d", round, off)
			}
		}
	}
	if s := f.cache.Stats(); s.Bytes > 3*4096 || s.Evictions == 0 {
		t.Errorf("cache %+v: want evictions and at most 3 spans of bytes", s)
	}
}

func TestCorruptCachedSpanDropped(t *testing.T) {
	f := newFixture(t, 2, 4096, 0, func(o *Options) { o.ReadAheadBytes = -1 })
	if err := f.m.Fetch(context.Background(), 0, 1, Prefetch); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "spans committed", func() bool { n, _ := f.cache.GroupUsage("layer"); return n == 2 })
	// Damage span 1 on disk.
	k := f.m.compKey(1)
	data, _ := f.cache.ReadFile(k)
	data[5] ^= 1
	f.cache.Put(k, data)
	got, err := f.m.Compressed(context.Background(), 0, 1, Demand)
	if err != nil || !bytes.Equal(got[1], f.layout.blob[4096:]) {
		t.Fatalf("Compressed = %v", err)
	}
	if s := f.m.Stats(); s.BadCached != 1 || f.src.requests.Load() != 2 {
		t.Errorf("stats %+v, %d requests; want 1 bad cached span fetched again", s, f.src.requests.Load())
	}
}

func TestPanickingInflateLandsEveryone(t *testing.T) {
	f := newFixture(t, 3, 4096, 0, func(o *Options) { o.ReadAheadBytes = -1 })
	f.layout.panicOn.Store(1)
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := f.m.ReadAt(context.Background(), make([]byte, 10), 4096)
			if !errors.Is(err, ErrLayerBad) {
				t.Errorf("ReadAt of a span whose inflation panics = %v, want ErrLayerBad", err)
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("readers hang after a panic")
	}
	// Other spans still work.
	if _, err := f.m.ReadAt(context.Background(), make([]byte, 10), 0); err != nil {
		t.Errorf("ReadAt of another span = %v", err)
	}
}

func TestCloseEndsWaitingFetches(t *testing.T) {
	f := newFixture(t, 2, 4096, 0, nil)
	f.src.gate = make(chan struct{}) // never opens
	errc := make(chan error, 1)
	go func() {
		_, err := f.m.ReadAt(context.Background(), make([]byte, 10), 0)
		errc <- err
	}()
	time.Sleep(20 * time.Millisecond)
	f.m.Close()
	select {
	case err := <-errc:
		if err == nil {
			t.Error("read succeeded after Close")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("read still waiting after Close")
	}
	if _, err := f.m.ReadAt(context.Background(), make([]byte, 10), 0); err == nil {
		t.Error("read after Close succeeded")
	}
}

func TestSequentialReadAhead(t *testing.T) {
	f := newFixture(t, 8, 4096, 0, func(o *Options) { o.ReadAheadBytes = 3 * 4096 })
	buf := make([]byte, 4096)
	f.m.ReadAt(context.Background(), buf, 0)
	f.m.ReadAt(context.Background(), buf, 4096) // sequential: read ahead 2..4
	waitFor(t, "read-ahead", func() bool { return f.m.Present(2) && f.m.Present(4) })
	if f.m.Present(5) {
		t.Error("read-ahead went past ReadAheadBytes")
	}
	before := f.src.requests.Load()
	f.m.ReadAt(context.Background(), buf, 2*4096)
	waitFor(t, "the next read-ahead", func() bool { return f.m.Present(5) })
	if f.src.requests.Load() != before+1 { // its own read-ahead: 5
		t.Errorf("read of a read-ahead span made %d requests, want only the next read-ahead", f.src.requests.Load()-before)
	}
}

// TestNoReadAheadOnceProfiled: once a start-up profile warmed spans, a
// sequential reader fetches only what it reads.
func TestNoReadAheadOnceProfiled(t *testing.T) {
	f := newFixture(t, 8, 4096, 0, func(o *Options) { o.ReadAheadBytes = 3 * 4096 })
	f.m.Warm([]int{0}, Demand)
	waitFor(t, "the warmed span", func() bool { return f.m.Present(0) })
	buf := make([]byte, 4096)
	f.m.ReadAt(context.Background(), buf, 0)
	f.m.ReadAt(context.Background(), buf, 4096)
	time.Sleep(50 * time.Millisecond)
	for id := 2; id < 8; id++ {
		if f.m.Present(id) {
			t.Errorf("span %d fetched by a read-ahead after the profile's warm-up", id)
		}
	}
}

func TestFetchErrorIsNotCached(t *testing.T) {
	f := newFixture(t, 2, 4096, 0, func(o *Options) { o.ReadAheadBytes = -1 })
	boom := errors.New("registry down")
	f.src.fail.Store(&boom)
	if _, err := f.m.ReadAt(context.Background(), make([]byte, 10), 0); !errors.Is(err, boom) {
		t.Fatalf("ReadAt with a failing source = %v, want the source's error", err)
	}
	f.src.fail.Store(nil)
	if _, err := f.m.ReadAt(context.Background(), make([]byte, 10), 0); err != nil {
		t.Fatalf("ReadAt after the source recovered = %v", err)
	}
}

// TestDamagedInflatedSpanDropped: an inflated span damaged on disk is
// caught by its digest the first time a Manager reads it, dropped, and
// inflated again from the compressed span.
func TestDamagedInflatedSpanDropped(t *testing.T) {
	var opts Options
	f := newFixture(t, 2, 4096, 0, func(o *Options) { o.ReadAheadBytes = -1; opts = *o })
	want := f.layout.plain()
	buf := make([]byte, 4096)
	if _, err := f.m.ReadAt(context.Background(), buf, 0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "span 0 inflated on disk", func() bool { return f.cache.Has(f.m.uncKey(0)) })
	f.m.Close()
	data, err := f.cache.ReadFile(f.m.uncKey(0))
	if err != nil {
		t.Fatal(err)
	}
	data[100] ^= 0xff
	f.cache.Put(f.m.uncKey(0), data)

	m2 := New(opts)
	defer m2.Close()
	got := make([]byte, 4096)
	if _, err := m2.ReadAt(context.Background(), got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want[:4096]) {
		t.Fatal("served the damaged inflated span")
	}
	if s := m2.Stats(); s.BadCached != 1 || s.Inflations != 1 {
		t.Errorf("stats %+v, want the damaged span dropped and inflated again", s)
	}
	if f.src.requests.Load() != 1 {
		t.Errorf("%d requests, want 1 (inflated again from the cached compressed span)", f.src.requests.Load())
	}
}
