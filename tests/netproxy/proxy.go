package netproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// ErrConfig is returned (wrapped) for an unusable Config.
var ErrConfig = errors.New("netproxy: invalid configuration")

// Config describes the emulated link.
type Config struct {
	// Listen is the address to accept clients on; default "127.0.0.1:0".
	Listen string
	// Target is the "host:port" every connection is forwarded to.
	Target string
	// Rate is the bandwidth of each direction in bytes per second, shared by
	// all connections; 0 means unlimited.
	Rate int64
	// RTT is the added round-trip time; each direction delays by RTT/2.
	RTT time.Duration
	// Burst is the token bucket depth in bytes: how far a link that was idle
	// may send ahead of its rate; default 16 KiB.
	Burst int64
}

// Stats are the counters of a Proxy.
type Stats struct {
	// BytesUp were delivered to the target, BytesDown to clients.
	BytesUp   int64 `json:"bytes_up"`
	BytesDown int64 `json:"bytes_down"`
	// Connections counts accepted connections, Active those still open.
	Connections int64 `json:"connections"`
	Active      int64 `json:"active"`
	// Failed counts connections whose target could not be reached.
	Failed int64 `json:"failed"`
}

// Bytes returns the bytes delivered in both directions.
func (s Stats) Bytes() int64 { return s.BytesUp + s.BytesDown }

// Proxy forwards TCP connections to a target through an emulated link.
type Proxy struct {
	cfg      Config
	ln       net.Listener
	up, down *link
	ctx      context.Context // canceled by Close
	cancel   context.CancelFunc
	wg       sync.WaitGroup // accept loop and every connection's goroutines

	bytesUp, bytesDown, conns, active, failed atomic.Int64

	mu      sync.Mutex // guards open
	open    map[*session]struct{}
	closing bool
}

// New starts a proxy as cfg says; the caller must Close it.
func New(cfg Config) (*Proxy, error) {
	if cfg.Target == "" {
		return nil, fmt.Errorf("%w: no target", ErrConfig)
	}
	if cfg.Rate < 0 || cfg.RTT < 0 || cfg.Burst < 0 {
		return nil, fmt.Errorf("%w: negative rate, RTT or burst", ErrConfig)
	}
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	if cfg.Burst == 0 {
		cfg.Burst = 16 << 10
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("netproxy: listen: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Proxy{
		cfg: cfg, ln: ln, ctx: ctx, cancel: cancel,
		up:   newLink(cfg.Rate, cfg.Burst),
		down: newLink(cfg.Rate, cfg.Burst),
		open: make(map[*session]struct{}),
	}
	p.wg.Add(1)
	go p.acceptLoop()
	return p, nil
}

// Addr returns the address clients connect to.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Config returns the proxy's configuration with defaults filled in.
func (p *Proxy) Config() Config { return p.cfg }

// Stats returns the current counters.
func (p *Proxy) Stats() Stats {
	return Stats{
		BytesUp: p.bytesUp.Load(), BytesDown: p.bytesDown.Load(),
		Connections: p.conns.Load(), Active: p.active.Load(), Failed: p.failed.Load(),
	}
}

// ResetStats sets the byte and connection counters to zero (Active is
// kept).
func (p *Proxy) ResetStats() {
	p.bytesUp.Store(0)
	p.bytesDown.Store(0)
	p.conns.Store(0)
	p.failed.Store(0)
}

// Close stops accepting, closes every connection and waits for all
// goroutines of the proxy to end.
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.closing = true
	sessions := make([]*session, 0, len(p.open))
	for s := range p.open {
		sessions = append(sessions, s)
	}
	p.mu.Unlock()
	p.cancel()
	err := p.ln.Close()
	for _, s := range sessions {
		s.abort()
	}
	p.wg.Wait()
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("netproxy: close: %w", err)
	}
	return nil
}

func (p *Proxy) acceptLoop() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if p.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			continue // transient (EMFILE, ECONNABORTED): keep serving
		}
		p.conns.Add(1)
		p.wg.Add(1)
		go p.serve(c)
	}
}

// serve connects to the target and runs both directions of one connection.
func (p *Proxy) serve(client net.Conn) {
	defer p.wg.Done()
	var d net.Dialer
	target, err := d.DialContext(p.ctx, "tcp", p.cfg.Target)
	if err != nil {
		p.failed.Add(1)
		client.Close()
		return
	}
	s := &session{client: client, target: target}
	p.mu.Lock()
	if p.closing {
		p.mu.Unlock()
		s.abort()
		return
	}
	p.open[s] = struct{}{}
	p.mu.Unlock()
	p.active.Add(1)

	oneWay := p.cfg.RTT / 2
	bound := max(int64(1<<20), 2*p.cfg.Rate*int64(p.cfg.RTT)/int64(time.Second))
	var dirs sync.WaitGroup
	dirs.Add(2)
	go func() {
		defer dirs.Done()
		p.pump(s, client, target, p.up, oneWay, bound, &p.bytesUp)
	}()
	go func() {
		defer dirs.Done()
		p.pump(s, target, client, p.down, oneWay, bound, &p.bytesDown)
	}()
	dirs.Wait()
	s.abort()
	p.mu.Lock()
	delete(p.open, s)
	p.mu.Unlock()
	p.active.Add(-1)
}

// session is one proxied connection.
type session struct {
	client, target net.Conn
	once           sync.Once
}

// abort closes both sides, which ends both directions.
func (s *session) abort() {
	s.once.Do(func() {
		s.client.Close()
		s.target.Close()
	})
}

// chunk is data in flight on a link, or the end of the stream (data nil).
type chunk struct {
	data []byte
	at   time.Time // delivery time
	err  error     // why the stream ended (io.EOF for a clean end)
}

const readSize = 32 << 10

// maxLead is how far ahead of a link's schedule a reader may queue data.
const maxLead = 20 * time.Millisecond

// pump moves one direction: a reader puts chunks on the link, a writer
// delivers them when due. It returns when the direction has ended.
func (p *Proxy) pump(s *session, src, dst net.Conn, l *link, delay time.Duration, bound int64, counter *atomic.Int64) {
	queue := make(chan chunk, max(64, bound/readSize+16))
	inflight := newBudget(bound)
	go func() { // the reader; pump (the writer) waits for it via queue closing
		defer close(queue)
		buf := make([]byte, readSize)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				if !inflight.take(p.ctx, int64(n)) {
					return
				}
				done := l.reserve(n)
				// Run at most maxLead ahead of the link: enough to keep it busy
				// despite timer jitter, little enough to keep its queue short.
				if !sleepUntil(p.ctx, done.Add(-maxLead)) {
					return
				}
				queue <- chunk{data: append([]byte(nil), buf[:n]...), at: done.Add(delay)}
			}
			if err != nil {
				queue <- chunk{err: err, at: time.Now().Add(delay)}
				return
			}
		}
	}()
	failed := false
	for c := range queue {
		if failed {
			inflight.give(int64(len(c.data))) // drain so that the reader can finish
			continue
		}
		if !sleepUntil(p.ctx, c.at) {
			failed = true
			inflight.give(int64(len(c.data)))
			s.abort()
			continue
		}
		if c.data == nil {
			if !errors.Is(c.err, io.EOF) {
				failed = true
				s.abort() // a reset or error on one side ends the connection
				continue
			}
			if cw, ok := dst.(interface{ CloseWrite() error }); ok {
				_ = cw.CloseWrite() // the peer may be gone already; the other direction notices
			}
			continue
		}
		n, err := dst.Write(c.data)
		counter.Add(int64(n))
		inflight.give(int64(len(c.data)))
		if err != nil {
			failed = true
			s.abort()
		}
	}
}

// sleepUntil waits until t or ctx's end; it reports whether t was reached.
func sleepUntil(ctx context.Context, t time.Time) bool {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err() == nil
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// link schedules the transmissions of one direction: a token bucket of
// rate bytes per second and depth burst bytes, first come first served.
type link struct {
	nsPerB float64       // transmission time of one byte in ns; 0: unlimited
	burst  time.Duration // the bucket depth as time

	mu   sync.Mutex // guards next
	next time.Time  // when the link has sent everything scheduled so far
}

func newLink(rate, burst int64) *link {
	if rate == 0 {
		return &link{}
	}
	ns := 1e9 / float64(rate)
	return &link{nsPerB: ns, burst: time.Duration(float64(burst) * ns)}
}

// reserve schedules n bytes and returns when their transmission ends.
func (l *link) reserve(n int) time.Time {
	now := time.Now()
	if l.nsPerB == 0 {
		return now
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if earliest := now.Add(-l.burst); l.next.Before(earliest) {
		l.next = earliest
	}
	l.next = l.next.Add(time.Duration(float64(n) * l.nsPerB))
	return l.next
}

// budget bounds the bytes one direction holds in flight.
type budget struct {
	mu    sync.Mutex
	cond  chan struct{} // closed and replaced whenever bytes are given back
	left  int64
	limit int64
}

func newBudget(limit int64) *budget {
	return &budget{cond: make(chan struct{}), left: limit, limit: limit}
}

// take waits until n bytes are available (a chunk bigger than the limit
// waits for an empty budget) or ctx ends.
func (b *budget) take(ctx context.Context, n int64) bool {
	for {
		b.mu.Lock()
		if b.left >= n || b.left == b.limit {
			b.left -= n
			b.mu.Unlock()
			return true
		}
		wait := b.cond
		b.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return false
		}
	}
}

func (b *budget) give(n int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.left += n
	close(b.cond)
	b.cond = make(chan struct{})
}
