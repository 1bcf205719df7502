package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

// profiler collects Go profiles of lazypull daemons (their metrics_address
// serves net/http/pprof) into dir, to see where the time and memory of a
// case go. The zero value (dir "") collects nothing.
type profiler struct {
	dir string
}

// freeAddr returns a free 127.0.0.1 address.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// cpu starts a CPU profile of the daemon at addr for d; wait returns when
// it is saved as <name>.cpu.pprof.
func (p profiler) cpu(addr, name string, d time.Duration) (wait func()) {
	if p.dir == "" || addr == "" {
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.save(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", addr, int(d.Seconds())), name+".cpu.pprof")
	}()
	return func() { <-done }
}

// heap saves the daemon's heap profile (in-use and allocated) as
// <name>.heap.pprof, and its metrics (fetches, preemptions, cache) as
// <name>.metrics.txt.
func (p profiler) heap(addr, name string) {
	if p.dir == "" || addr == "" {
		return
	}
	p.save("http://"+addr+"/debug/pprof/heap", name+".heap.pprof")
	p.save("http://"+addr+"/metrics", name+".metrics.txt")
}

func (p profiler) save(url, name string) {
	resp, err := http.Get(url)
	if err != nil {
		logf("profile %s: %v", name, err)
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		logf("profile %s: %s answered %s", name, url, resp.Status)
		return
	}
	if err := os.MkdirAll(p.dir, 0o755); err != nil {
		logf("profile %s: %v", name, err)
		return
	}
	f, err := os.Create(filepath.Join(p.dir, name))
	if err != nil {
		logf("profile %s: %v", name, err)
		return
	}
	defer f.Close()
	if _, err := io.Copy(f, resp.Body); err != nil {
		logf("profile %s: %v", name, err)
	}
}
