package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lazypull/lazypull/tests/testenv"
)

// forkUser is an unprivileged user the test creates (and removes) with
// subordinate IDs, a runtime directory, and the forked podman installed
// where it can run it (as `podman` first on its PATH).
type forkUser struct {
	t                       *testing.T
	name, home, runDir, bin string
	uid, gid                int
}

// newForkUser creates the user. Its cleanup ends what the user still runs
// (the layer store the driver started, podman's pause process), by process
// id, removes the user and its directories, and restores /dev/fuse's mode.
func newForkUser(t *testing.T, podman string) *forkUser {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a user")
	}
	for _, c := range []string{"useradd", "usermod", "userdel", "runuser", "newuidmap", "newgidmap"} {
		if _, err := exec.LookPath(c); err != nil {
			t.Skipf("needs %s (apt-get install passwd util-linux uidmap): %v", c, err)
		}
	}
	name := fmt.Sprintf("lzf%d", os.Getpid()%100000)
	start, err := testenv.FreeSubIDs(500000)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("useradd", "-m", "-s", "/bin/sh", name).CombinedOutput(); err != nil {
		t.Fatalf("useradd: %v\n%s", err, out)
	}
	u := &forkUser{t: t, name: name}
	t.Cleanup(u.remove)
	r := fmt.Sprintf("%d-%d", start, start+65535)
	if out, err := exec.Command("usermod", "--add-subuids", r, "--add-subgids", r, name).CombinedOutput(); err != nil {
		t.Fatalf("usermod: %v\n%s", err, out)
	}
	pw, err := user.Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	u.uid, _ = strconv.Atoi(pw.Uid)
	u.gid, _ = strconv.Atoi(pw.Gid)
	u.home = pw.HomeDir
	u.runDir = filepath.Join("/run/user", pw.Uid) // what logind makes at login
	if err := os.MkdirAll(u.runDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(u.runDir, u.uid, u.gid); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("needs /dev/fuse: %v", err)
	} else if mode := fi.Mode().Perm(); mode&0o006 != 0o006 { // Debian's udev rule: 0666
		if err := os.Chmod("/dev/fuse", 0o666); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = os.Chmod("/dev/fuse", mode) })
	}
	dir, err := os.MkdirTemp("", "lzf-bin-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	u.bin = dir
	if err := testenv.CopyFile(podman, filepath.Join(dir, "podman"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return u
}

// run runs a command as the user, in its home, with a login session's
// environment (the forked podman first on PATH), and returns its stdout.
func (u *forkUser) run(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "runuser", append([]string{"-u", u.name, "--", "env", "-i",
		"HOME=" + u.home, "USER=" + u.name, "LOGNAME=" + u.name, "XDG_RUNTIME_DIR=" + u.runDir,
		"PATH=" + u.bin + ":/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", name}, args...)...)
	cmd.Dir = u.home
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s %s (as %s): %w: %s", name, strings.Join(args, " "), u.name, err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(stdout.String()), nil
}

// writeFile writes a file of the user's under its home.
func (u *forkUser) writeFile(rel, content string) {
	u.t.Helper()
	path := filepath.Join(u.home, rel)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		u.t.Fatal(err)
	}
	for d := filepath.Dir(path); d != u.home && d != "/"; d = filepath.Dir(d) {
		if err := os.Chown(d, u.uid, u.gid); err != nil {
			u.t.Fatal(err)
		}
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		u.t.Fatal(err)
	}
	if err := os.Chown(path, u.uid, u.gid); err != nil {
		u.t.Fatal(err)
	}
}

// processes returns the ids of the user's processes.
func (u *forkUser) processes() []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		var st syscall.Stat_t
		if syscall.Stat(filepath.Join("/proc", e.Name()), &st) == nil && int(st.Uid) == u.uid {
			pids = append(pids, pid)
		}
	}
	return pids
}

// remove ends the user's processes, then removes the user, its home and
// its runtime directory.
func (u *forkUser) remove() {
	if u.uid != 0 {
		for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
			for _, pid := range u.processes() {
				_ = syscall.Kill(pid, sig)
			}
			for i := 0; i < 100 && len(u.processes()) > 0; i++ {
				time.Sleep(50 * time.Millisecond)
			}
		}
	}
	if out, err := exec.Command("userdel", "-r", u.name).CombinedOutput(); err != nil && !strings.Contains(string(out), "mail spool") {
		u.t.Errorf("userdel %s: %v\n%s", u.name, err, out)
	}
	if u.runDir != "" {
		_ = os.RemoveAll(u.runDir)
	}
}
