package testenv

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// ConnectProxy is an HTTP proxy on 127.0.0.1 that opens CONNECT tunnels
// (what clients use for https targets) and refuses anything else with 405,
// recording every request it gets. It keeps the header lines of each
// request and the first bytes each client sent through its tunnel, so that
// a test can check that no credential ever reached the proxy in clear.
type ConnectProxy struct {
	// Host is "127.0.0.1:<port>"; URL is "http://" + Host, the value for
	// HTTPS_PROXY.
	Host string
	URL  string

	l    net.Listener
	wg   sync.WaitGroup
	done chan struct{}

	mu      sync.Mutex // guards the fields below
	tunnels map[string]int
	refused map[string]int
	seen    bytes.Buffer // request heads and captured tunnel bytes
	conns   map[net.Conn]bool
}

// maxCapture bounds the bytes a ConnectProxy keeps from each tunnel.
const maxCapture = 1 << 20

// StartConnectProxy starts a ConnectProxy and closes it in t.Cleanup.
func StartConnectProxy(t testing.TB) *ConnectProxy {
	t.Helper()
	p, err := NewConnectProxy()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("close CONNECT proxy: %v", err)
		}
	})
	return p
}

// NewConnectProxy starts a ConnectProxy; the caller must Close it.
func NewConnectProxy() (*ConnectProxy, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("testenv: proxy listen: %w", err)
	}
	p := &ConnectProxy{Host: l.Addr().String(), l: l, done: make(chan struct{}),
		tunnels: map[string]int{}, refused: map[string]int{}, conns: map[net.Conn]bool{}}
	p.URL = "http://" + p.Host
	p.wg.Add(1)
	go p.serve()
	return p, nil
}

func (p *ConnectProxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.l.Accept()
		if err != nil {
			return // closed
		}
		if !p.track(c, true) {
			c.Close()
			return
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			defer p.track(c, false)
			defer c.Close()
			p.handle(c)
		}()
	}
}

// track adds or removes an open connection; it refuses new ones after Close.
func (p *ConnectProxy) track(c net.Conn, add bool) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !add {
		delete(p.conns, c)
		return true
	}
	select {
	case <-p.done:
		return false
	default:
	}
	p.conns[c] = true
	return true
}

func (p *ConnectProxy) handle(c net.Conn) {
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	br := bufio.NewReader(c)
	req, err := http.ReadRequest(br)
	if err != nil {
		return
	}
	var head bytes.Buffer
	_ = req.Header.Write(&head)
	p.mu.Lock()
	fmt.Fprintf(&p.seen, "%s %s\n%s\n", req.Method, req.RequestURI, head.String())
	p.mu.Unlock()
	if req.Method != http.MethodConnect {
		p.mu.Lock()
		p.refused[req.Host]++
		p.mu.Unlock()
		_, _ = io.WriteString(c, "HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
		return
	}
	target := req.Host
	up, err := net.DialTimeout("tcp", target, 10*time.Second)
	if err != nil {
		_, _ = io.WriteString(c, "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
		return
	}
	if !p.track(up, true) {
		up.Close()
		return
	}
	defer p.track(up, false)
	defer up.Close()
	p.mu.Lock()
	p.tunnels[target]++
	p.mu.Unlock()
	_ = c.SetReadDeadline(time.Time{})
	if _, err := io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		return
	}
	// The client may have sent bytes after its request already.
	var buffered []byte
	if n := br.Buffered(); n > 0 {
		buffered, _ = br.Peek(n)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = io.Copy(c, up)
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
	}()
	capture := &captureWriter{p: p, left: maxCapture}
	_, _ = capture.Write(buffered)
	if _, err := up.Write(buffered); err == nil {
		_, _ = io.Copy(io.MultiWriter(up, capture), c)
	}
	if tc, ok := up.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
	<-done
}

// captureWriter keeps up to left bytes of a tunnel in the proxy's record.
type captureWriter struct {
	p    *ConnectProxy
	left int
}

func (w *captureWriter) Write(b []byte) (int, error) {
	if k := min(len(b), w.left); k > 0 {
		w.p.mu.Lock()
		w.p.seen.Write(b[:k])
		w.p.mu.Unlock()
		w.left -= k
	}
	return len(b), nil
}

// Tunnels returns the number of CONNECT tunnels opened per target
// ("host:port").
func (p *ConnectProxy) Tunnels() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[string]int, len(p.tunnels))
	for k, v := range p.tunnels {
		out[k] = v
	}
	return out
}

// Refused returns the number of non-CONNECT requests (plain http proxying)
// per target host.
func (p *ConnectProxy) Refused() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[string]int, len(p.refused))
	for k, v := range p.refused {
		out[k] = v
	}
	return out
}

// Saw reports whether s appeared in clear in what the proxy received: the
// head of any request, or the first bytes of any tunnel.
func (p *ConnectProxy) Saw(s string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Contains(p.seen.String(), s)
}

// Close stops the proxy and every tunnel.
func (p *ConnectProxy) Close() error {
	p.mu.Lock()
	select {
	case <-p.done:
		p.mu.Unlock()
		return nil
	default:
	}
	close(p.done)
	err := p.l.Close()
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("testenv: close proxy: %w", err)
	}
	return nil
}
