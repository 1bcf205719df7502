// Command netproxy runs a userspace TCP proxy emulating a network link (see
// package tests/netproxy) until SIGINT or SIGTERM.
//
//	netproxy -listen 127.0.0.1:6000 -target 127.0.0.1:5000 -rate 200mbit -rtt 20ms -stats-addr 127.0.0.1:6001
//
// It prints "listening on ADDR" (and "stats on ADDR") on stdout once ready.
// GET http://<stats-addr>/ returns the counters as JSON; POST .../reset
// zeroes them. With -stats-file the final counters are written there as JSON
// on exit.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/lazypull/lazypull/tests/netproxy"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "netproxy:", err)
		os.Exit(1)
	}
}

func run() error {
	listen := flag.String("listen", "127.0.0.1:0", "address to accept clients on")
	target := flag.String("target", "", "host:port to forward to (required)")
	rate := flag.String("rate", "0", "bandwidth per direction, e.g. 200mbit, 25MB, 0 = unlimited")
	rtt := flag.Duration("rtt", 0, "added round-trip time, e.g. 20ms (half per direction)")
	burst := flag.Int64("burst", 0, "token bucket depth in bytes (default 16 KiB)")
	statsAddr := flag.String("stats-addr", "", "serve counters as JSON over HTTP on this address")
	statsFile := flag.String("stats-file", "", "write the final counters as JSON to this file on exit")
	flag.Parse()

	r, err := netproxy.ParseRate(*rate)
	if err != nil {
		return err
	}
	p, err := netproxy.New(netproxy.Config{Listen: *listen, Target: *target, Rate: r, RTT: *rtt, Burst: *burst})
	if err != nil {
		return err
	}
	defer p.Close()

	var srv *http.Server
	serveErr := make(chan error, 1)
	if *statsAddr != "" {
		l, err := net.Listen("tcp", *statsAddr)
		if err != nil {
			return fmt.Errorf("stats listen: %w", err)
		}
		srv = &http.Server{Handler: p.StatsHandler(), ReadHeaderTimeout: 10 * time.Second}
		go func() { serveErr <- srv.Serve(l) }()
		fmt.Printf("stats on %s\n", l.Addr())
	}
	fmt.Printf("listening on %s\n", p.Addr())

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	select {
	case <-ctx.Done():
	case err := <-serveErr:
		return fmt.Errorf("stats server: %w", err)
	}
	if srv != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
			fmt.Fprintln(os.Stderr, "netproxy: stats server:", err)
		}
	}
	if err := p.Close(); err != nil {
		return err
	}
	if *statsFile != "" {
		b, err := json.Marshal(p.Stats())
		if err != nil {
			return err
		}
		if err := os.WriteFile(*statsFile, append(b, '\n'), 0o644); err != nil {
			return fmt.Errorf("stats file: %w", err)
		}
	}
	return nil
}
