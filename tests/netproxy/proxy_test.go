package netproxy

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"
)

// server is a real TCP server on loopback running handle for each
// connection; it is closed (and waited for) at the end of the test.
func server(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				handle(c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return ln.Addr().String()
}

func startProxy(t *testing.T, cfg Config) *Proxy {
	t.Helper()
	p, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return p
}

// sender writes n bytes to every connection, then closes it.
func sender(n int) func(net.Conn) {
	return func(c net.Conn) {
		buf := make([]byte, 64<<10)
		for left := n; left > 0; {
			k, err := c.Write(buf[:min(left, len(buf))])
			if err != nil {
				return
			}
			left -= k
		}
	}
}

// echo copies everything back until the client half-closes.
func echo(c net.Conn) {
	_, _ = io.Copy(c, c)
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
}

// download connects through addr and reads until EOF, returning the bytes
// read and the time taken.
func download(t *testing.T, addr string) (int64, time.Duration) {
	t.Helper()
	start := time.Now()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	n, err := io.Copy(io.Discard, c)
	if err != nil {
		t.Fatalf("download: %v", err)
	}
	return n, time.Since(start)
}

// TestThroughput times a 20 MB download through a 50 Mbit/s link: 3.2 s
// within ±20 % (a timed test of the tool with a generous bound).
func TestThroughput(t *testing.T) {
	const size = 20_000_000
	target := server(t, sender(size))
	rate, err := ParseRate("50mbit")
	if err != nil {
		t.Fatal(err)
	}
	p := startProxy(t, Config{Target: target, Rate: rate})
	n, took := download(t, p.Addr())
	if n != size {
		t.Fatalf("downloaded %d bytes, want %d", n, size)
	}
	want := 3200 * time.Millisecond
	t.Logf("20 MB at 50 Mbit/s took %v (ideal %v)", took, want)
	if took < want*8/10 || took > want*12/10 {
		t.Errorf("20 MB at 50 Mbit/s took %v, want %v ±20%%", took, want)
	}
}

// TestSharedRate checks that parallel connections share one link: two 5 MB
// downloads at 40 Mbit/s (5 MB/s) take about 2 s together, not 1 s.
func TestSharedRate(t *testing.T) {
	const size = 5_000_000
	target := server(t, sender(size))
	p := startProxy(t, Config{Target: target, Rate: 5_000_000})
	start := time.Now()
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", p.Addr())
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			if n, err := io.Copy(io.Discard, c); n != size || err != nil {
				t.Errorf("download = %d bytes, %v; want %d bytes", n, err, size)
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	t.Logf("2 x 5 MB at 5 MB/s took %v", took)
	if took < 1600*time.Millisecond || took > 2600*time.Millisecond {
		t.Errorf("2 x 5 MB over a shared 5 MB/s link took %v, want about 2s", took)
	}
}

// TestDelayDoesNotLimitThroughput checks that the delay is applied by
// timestamp: 10 MB at 100 Mbit/s with 40 ms RTT takes about 0.8 s + 20 ms,
// not a multiple of the RTT per window.
func TestDelayDoesNotLimitThroughput(t *testing.T) {
	const size = 10_000_000
	target := server(t, sender(size))
	p := startProxy(t, Config{Target: target, Rate: 12_500_000, RTT: 40 * time.Millisecond})
	n, took := download(t, p.Addr())
	if n != size {
		t.Fatalf("downloaded %d bytes, want %d", n, size)
	}
	t.Logf("10 MB at 100 Mbit/s with 40 ms RTT took %v", took)
	if took < 800*time.Millisecond || took > 1200*time.Millisecond {
		t.Errorf("10 MB at 100 Mbit/s with 40 ms RTT took %v, want about 0.84s", took)
	}
}

// pingMedian returns the median time of rounds one-byte request/response
// exchanges over one connection to addr.
func pingMedian(t *testing.T, addr string, rounds int) time.Duration {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var times []time.Duration
	b := []byte{'x'}
	for range rounds {
		start := time.Now()
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, b); err != nil {
			t.Fatal(err)
		}
		times = append(times, time.Since(start))
	}
	slices.Sort(times)
	return times[len(times)/2]
}

// TestRTT checks that the added RTT shows in a request/response ping.
func TestRTT(t *testing.T) {
	target := server(t, echo)
	direct := pingMedian(t, target, 10)
	tests := []time.Duration{0, 20 * time.Millisecond, 60 * time.Millisecond}
	for _, rtt := range tests {
		p := startProxy(t, Config{Target: target, RTT: rtt, Rate: 25_000_000})
		got := pingMedian(t, p.Addr(), 10) - direct
		t.Logf("RTT %v: ping %v above direct", rtt, got)
		// A ping through the proxy is never faster than the added RTT; the
		// lower bound allows for noise in the direct measurement.
		if lo, hi := rtt-time.Millisecond, rtt+15*time.Millisecond; got < lo || got > hi {
			t.Errorf("ping through a %v RTT proxy adds %v, want %v..%v", rtt, got, lo, hi)
		}
	}
}

// TestCountersExact checks the byte and connection counters after several
// connections of different sizes, and the HTTP stats endpoint.
func TestCountersExact(t *testing.T) {
	target := server(t, echo)
	p := startProxy(t, Config{Target: target, Rate: 50_000_000, RTT: 2 * time.Millisecond})
	sizes := []int{0, 1, 1000, 65536, 300_001}
	var total int64
	for _, size := range sizes {
		c, err := net.Dial("tcp", p.Addr())
		if err != nil {
			t.Fatal(err)
		}
		payload := bytes.Repeat([]byte{'a'}, size)
		errc := make(chan error, 1)
		go func() {
			_, err := c.Write(payload)
			if err == nil {
				err = c.(*net.TCPConn).CloseWrite()
			}
			errc <- err
		}()
		got, err := io.ReadAll(c)
		if err != nil || len(got) != size {
			t.Errorf("echo of %d bytes returned %d bytes, %v", size, len(got), err)
		}
		if err := <-errc; err != nil {
			t.Errorf("write: %v", err)
		}
		c.Close()
		total += int64(size)
	}
	// The last connection's bookkeeping ends shortly after the client saw EOF.
	deadline := time.Now().Add(2 * time.Second)
	for p.Stats().Active != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	want := Stats{BytesUp: total, BytesDown: total, Connections: int64(len(sizes))}
	if got := p.Stats(); got != want {
		t.Errorf("Stats() = %+v, want %+v", got, want)
	}

	srv := httptest.NewServer(p.StatsHandler())
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/stats")
	if err != nil {
		t.Fatal(err)
	}
	var fromHTTP Stats
	err = json.NewDecoder(resp.Body).Decode(&fromHTTP)
	resp.Body.Close()
	if err != nil || fromHTTP != want {
		t.Errorf("GET /stats = %+v, %v; want %+v", fromHTTP, err, want)
	}
	resp, err = http.Post(srv.URL+"/reset", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := p.Stats(); got != (Stats{}) {
		t.Errorf("Stats() after POST /reset = %+v, want zero", got)
	}
}

// TestUnreachableTarget checks that a failed dial is counted and the client
// sees the connection closed.
func TestUnreachableTarget(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	p := startProxy(t, Config{Target: addr})
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 1)); err == nil {
		t.Errorf("Read through a proxy to a closed port = %d bytes, want an error", n)
	}
	if got := p.Stats().Failed; got != 1 {
		t.Errorf("Stats().Failed = %d, want 1", got)
	}
}

// TestCloseEndsEverything checks that Close ends open connections and
// leaves no goroutines behind.
func TestCloseEndsEverything(t *testing.T) {
	target := server(t, echo)
	before := runtime.NumGoroutine()
	p, err := New(Config{Target: target, Rate: 1000, RTT: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	for range 3 {
		c, err := net.Dial("tcp", p.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write(make([]byte, 100_000)) // stuck in the slow link
		conns = append(conns, c)
	}
	time.Sleep(100 * time.Millisecond)
	done := make(chan error, 1)
	go func() { done <- p.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return within 5s")
	}
	for i, c := range conns {
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := io.ReadAll(c); err != nil && !errors.Is(err, net.ErrClosed) {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Errorf("connection %d still open after Close", i)
			}
		}
	}
	// The echo server's handlers end when their connections close.
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if after := runtime.NumGoroutine(); after > before {
		t.Errorf("%d goroutines after Close, %d before New", after, before)
	}
}

func TestParseRate(t *testing.T) {
	tests := []struct {
		in      string
		want    int64
		wantErr bool
	}{
		{"", 0, false},
		{"0", 0, false},
		{"200mbit", 25_000_000, false},
		{"50Mbit", 6_250_000, false},
		{"1gbit/s", 125_000_000, false},
		{"800kbit", 100_000, false},
		{"25MB", 25_000_000, false},
		{"2MiB", 2 << 20, false},
		{"1.5kb", 1500, false},
		{"4096", 4096, false},
		{"fast", 0, true},
		{"-1mbit", 0, true},
		{"10mbps", 0, true},
	}
	for _, tc := range tests {
		got, err := ParseRate(tc.in)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("ParseRate(%q) = %d, %v; want %d, error %v", tc.in, got, err, tc.want, tc.wantErr)
		}
		if err != nil && !errors.Is(err, ErrConfig) {
			t.Errorf("ParseRate(%q) error %v does not wrap ErrConfig", tc.in, err)
		}
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	tests := []Config{
		{},
		{Target: "127.0.0.1:1", Rate: -1},
		{Target: "127.0.0.1:1", RTT: -time.Second},
	}
	for _, cfg := range tests {
		if p, err := New(cfg); !errors.Is(err, ErrConfig) {
			if p != nil {
				p.Close()
			}
			t.Errorf("New(%+v) error = %v, want ErrConfig", cfg, err)
		}
	}
}
