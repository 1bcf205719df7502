package testenv

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// FreeSubIDs returns the start, at floor or above, of 65536 subordinate IDs
// that no entry of /etc/subuid or /etc/subgid uses (for a rootless test
// user).
func FreeSubIDs(floor int) (int, error) {
	next := floor
	for _, f := range []string{"/etc/subuid", "/etc/subgid"} {
		b, err := os.ReadFile(f)
		if err != nil && !os.IsNotExist(err) {
			return 0, err
		}
		s := bufio.NewScanner(bytes.NewReader(b))
		for s.Scan() {
			parts := strings.Split(s.Text(), ":")
			if len(parts) != 3 {
				continue
			}
			a, err1 := strconv.Atoi(parts[1])
			n, err2 := strconv.Atoi(parts[2])
			if err1 == nil && err2 == nil && a+n > next {
				next = a + n
			}
		}
	}
	return next, nil
}

// CopyFile copies src to dst (created or truncated with mode), e.g. a
// binary into a directory a test user may execute from.
func CopyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// RootlessUserOptions describe a RootlessUser.
type RootlessUserOptions struct {
	// Prefix starts the user's name (the rest is the test's pid), so that
	// users of different tests never collide.
	Prefix string
	// SubIDFloor is where the search for free subordinate IDs starts.
	SubIDFloor int
	// Tools are commands the test needs besides the user tools; it is
	// skipped without them.
	Tools []string
	// Binaries are copied (name -> source path) into Bin, a directory the
	// user may execute from, first on the user's PATH.
	Binaries map[string]string
}

// RootlessUser is an unprivileged user a test creates (and removes), with
// 65536 subordinate IDs, a home, the runtime directory logind would make,
// /dev/fuse usable (Debian's udev rule) and the binaries under test where
// it may run them.
type RootlessUser struct {
	t                       *testing.T
	Name, Home, RunDir, Bin string
	UID, GID                int
}

// NewRootlessUser creates the user, or skips the test without root or the
// tools. Its cleanup ends what the user still runs (podman's pause process,
// a daemon left by a failed test), by process id, removes the user and its
// directories, and restores /dev/fuse's mode.
func NewRootlessUser(t *testing.T, o RootlessUserOptions) *RootlessUser {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a user")
	}
	for _, c := range append([]string{"useradd", "usermod", "userdel", "runuser", "newuidmap", "newgidmap"}, o.Tools...) {
		if _, err := exec.LookPath(c); err != nil {
			t.Skipf("needs %s (apt-get install passwd util-linux uidmap): %v", c, err)
		}
	}
	fi, err := os.Stat("/dev/fuse")
	if err != nil {
		t.Skipf("needs /dev/fuse: %v", err)
	}
	name := fmt.Sprintf("%s%d", o.Prefix, os.Getpid()%100000)
	start, err := FreeSubIDs(o.SubIDFloor)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("useradd", "-m", "-s", "/bin/sh", name).CombinedOutput(); err != nil {
		t.Fatalf("useradd: %v\n%s", err, out)
	}
	u := &RootlessUser{t: t, Name: name}
	t.Cleanup(u.remove)
	r := fmt.Sprintf("%d-%d", start, start+65535)
	if out, err := exec.Command("usermod", "--add-subuids", r, "--add-subgids", r, name).CombinedOutput(); err != nil {
		t.Fatalf("usermod: %v\n%s", err, out)
	}
	pw, err := user.Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	u.UID, _ = strconv.Atoi(pw.Uid)
	u.GID, _ = strconv.Atoi(pw.Gid)
	u.Home = pw.HomeDir
	u.RunDir = filepath.Join("/run/user", pw.Uid)
	if err := os.MkdirAll(u.RunDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(u.RunDir, u.UID, u.GID); err != nil {
		t.Fatal(err)
	}
	if mode := fi.Mode().Perm(); mode&0o006 != 0o006 {
		if err := os.Chmod("/dev/fuse", 0o666); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = os.Chmod("/dev/fuse", mode) })
	}
	dir, err := os.MkdirTemp("", name+"-bin-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	u.Bin = dir
	for name, src := range o.Binaries {
		if err := CopyFile(src, filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return u
}

// Command returns a command run as the user, in its home, with a login
// session's environment (Bin first on PATH).
func (u *RootlessUser) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "runuser", append([]string{"-u", u.Name, "--", "env", "-i",
		"HOME=" + u.Home, "USER=" + u.Name, "LOGNAME=" + u.Name, "XDG_RUNTIME_DIR=" + u.RunDir,
		"PATH=" + u.Bin + ":/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", name}, args...)...)
	cmd.Dir = u.Home
	return cmd
}

// Run runs a command as the user (at most 5 minutes) and returns its
// stdout; the error carries its stderr.
func (u *RootlessUser) Run(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := u.Command(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s %s (as %s): %w: %s", name, strings.Join(args, " "), u.Name, err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(stdout.String()), nil
}

// MustRun is Run, failing the test on an error.
func (u *RootlessUser) MustRun(name string, args ...string) string {
	u.t.Helper()
	out, err := u.Run(name, args...)
	if err != nil {
		u.t.Fatal(err)
	}
	return out
}

// WriteFile writes a file of the user's at rel under its home (with the
// directories to it) and returns its path.
func (u *RootlessUser) WriteFile(rel, content string) string {
	u.t.Helper()
	path := filepath.Join(u.Home, rel)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		u.t.Fatal(err)
	}
	for d := filepath.Dir(path); d != u.Home && d != "/"; d = filepath.Dir(d) {
		if err := os.Chown(d, u.UID, u.GID); err != nil {
			u.t.Fatal(err)
		}
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		u.t.Fatal(err)
	}
	if err := os.Chown(path, u.UID, u.GID); err != nil {
		u.t.Fatal(err)
	}
	return path
}

// Processes returns the ids of the user's processes.
func (u *RootlessUser) Processes() []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		var st syscall.Stat_t
		if syscall.Stat(filepath.Join("/proc", e.Name()), &st) == nil && int(st.Uid) == u.UID {
			pids = append(pids, pid)
		}
	}
	return pids
}

// remove ends the user's processes, then removes the user, its home and
// its runtime directory.
func (u *RootlessUser) remove() {
	if u.UID != 0 {
		for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
			for _, pid := range u.Processes() {
				_ = syscall.Kill(pid, sig)
			}
			for i := 0; i < 100 && len(u.Processes()) > 0; i++ {
				time.Sleep(50 * time.Millisecond)
			}
		}
	}
	if out, err := exec.Command("userdel", "-r", u.Name).CombinedOutput(); err != nil && !strings.Contains(string(out), "mail spool") {
		u.t.Errorf("userdel %s: %v\n%s", u.Name, err, out)
	}
	if u.RunDir != "" {
		_ = os.RemoveAll(u.RunDir)
	}
}
