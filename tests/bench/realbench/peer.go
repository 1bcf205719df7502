package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/lazypull/lazypull/tests/testenv"
)

// peer: stargz-store (the binary given, only run to compare) serving the
// eStargz copy to podman 4.3.1 as its Additional Layer Store, with its
// default configuration but for the insecure (plain HTTP) registry.
func (b *bench) peer() error {
	if !b.want(caseStargz) || b.stargz == "" {
		return nil
	}
	dir := filepath.Join(b.dir, "stargz")
	mnt := filepath.Join(dir, "store")
	for _, d := range []string{filepath.Join(dir, "root"), mnt} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	var cfg strings.Builder
	for _, h := range b.insecure {
		fmt.Fprintf(&cfg, "[[resolver.host.%q.mirrors]]\nhost = %q\ninsecure = true\n\n", h, h)
	}
	cfgPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg.String()), 0o644); err != nil {
		return err
	}
	logPath := filepath.Join(dir, "stargz-store.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logFile.Close()
	cmd := exec.Command(b.stargz, "--root", filepath.Join(dir, "root"), "--config", cfgPath, "--log-level", "info", mnt)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start stargz-store: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		_ = syscall.Unmount(mnt, syscall.MNT_DETACH)
	}()
	if err := waitMount(mnt, exited, 30*time.Second); err != nil {
		return fmt.Errorf("stargz-store: %w (log %s)", err, logPath)
	}
	pm, err := b.podman("stargz", "overlay.additionallayerstore="+mnt+":ref")
	if err != nil {
		return err
	}
	defer pm.Close()
	r, err := b.pullAndRun(caseStargz, pm, b.estargzRef, "")
	if err != nil {
		return err
	}
	r.PeakRSS, _ = testenv.PeakRSS(cmd.Process.Pid)
	if n := countALSLayers(pm.Root, mnt); n != len(b.img.Layers) {
		r.Note = fmt.Sprintf("%d of %d layers lazy", n, len(b.img.Layers))
	}
	b.add(r)
	return nil
}

// waitMount waits until mnt is a mount point (or the process exits).
func waitMount(mnt string, exited <-chan error, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		mounts, _ := testenv.MountsBelow(mnt)
		for _, m := range mounts {
			if m == mnt {
				return nil
			}
		}
		select {
		case err := <-exited:
			return fmt.Errorf("exited: %v", err)
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s not mounted after %s", mnt, timeout)
}

// countALSLayers counts podman's layers that link into the store at mnt
// (overlay's diff of an ALS layer is a symlink into it).
func countALSLayers(root, mnt string) int {
	links, _ := filepath.Glob(filepath.Join(root, "overlay", "*", "diff"))
	n := 0
	for _, l := range links {
		if t, err := os.Readlink(l); err == nil && strings.HasPrefix(t, mnt) {
			n++
		}
	}
	return n
}
