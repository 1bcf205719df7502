package e2e

import (
	"bufio"
	"encoding/base64"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/lazypull/lazypull/tests/imagegen"
	"github.com/lazypull/lazypull/tests/testenv"
)

// localUser is an unprivileged account made with useradd for a test.
type localUser struct {
	name     string
	uid, gid uint32
}

// newLocalUser creates a user without a home; the test's cleanup removes
// it.
func newLocalUser(t *testing.T) *localUser {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a user")
	}
	for _, c := range []string{"useradd", "userdel"} {
		if _, err := exec.LookPath(c); err != nil {
			t.Skipf("needs %s (apt-get install passwd): %v", c, err)
		}
	}
	name := fmt.Sprintf("lzx%d", os.Getpid()%100000)
	if out, err := exec.Command("useradd", "-M", "-s", "/bin/sh", name).CombinedOutput(); err != nil {
		t.Fatalf("useradd %s: %v\n%s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("userdel", name).CombinedOutput(); err != nil {
			t.Errorf("userdel %s: %v\n%s", name, err, out)
		}
	})
	pw, err := user.Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(pw.Uid)
	gid, _ := strconv.Atoi(pw.Gid)
	return &localUser{name: name, uid: uint32(uid), gid: uint32(gid)}
}

// run runs a command as the user; it returns its combined output.
func (u *localUser) run(args ...string) (string, error) {
	cmd := exec.Command(args[0], args[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: u.uid, Gid: u.gid}}
	cmd.Dir = "/"
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// unitPrelude runs what contrib/systemd/lazypull.service does before the
// daemon starts (its ExecStartPre lines, under its UMask, systemd's 0022 if
// it sets none), with /var/lib/lazypull/store replaced by mnt and
// /var/lib/lazypull by root.
func unitPrelude(t *testing.T, root, mnt string) {
	t.Helper()
	f, err := os.Open(filepath.Join(repoRoot(t), "contrib", "systemd", "lazypull.service"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	umask, pre := "0022", []string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if v, ok := strings.CutPrefix(line, "UMask="); ok {
			umask = v
		}
		if v, ok := strings.CutPrefix(line, "ExecStartPre="); ok {
			v = strings.TrimLeft(v, "-@+!:") // systemd's prefixes
			pre = append(pre, strings.NewReplacer("/var/lib/lazypull/store", mnt, "/var/lib/lazypull", root).Replace(v))
		}
	}
	for _, cmd := range pre {
		if out, err := exec.Command("/bin/sh", "-c", "umask "+umask+" && "+cmd).CombinedOutput(); err != nil {
			t.Fatalf("ExecStartPre %q: %v\n%s", cmd, err, out)
		}
	}
	t.Logf("unit prelude (umask %s): %q", umask, pre)
}

// repoRoot is the repository's top directory.
func repoRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("go.mod not found above the test's directory")
		}
		dir = parent
	}
}

// freeAddr returns a loopback address with a port nobody listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// exposureImage is a small image with one lazily served layer.
func exposureImage() imagegen.Options {
	return imagegen.Options{Name: "exposure", Seed: 51, Layers: []imagegen.LayerSpec{
		{Compression: imagegen.Gzip, Dir: "usr/lib/base", Busybox: true, SmallFiles: 50,
			Random: []int64{5 << 20}},
		{Compression: imagegen.Gzip, Dir: "srv/top", SmallFiles: 5},
	}}
}

// TestOtherUsersSeeNothing sets the store up as the shipped systemd unit does
// (its ExecStartPre lines and umask, then `lazypull serve` with the default
// configuration), pulls an image lazily with rootful podman, and checks that
// an ordinary local user can neither list nor read anything the daemon
// keeps (root_dir: spans, indexes, the control socket) or serves (the mount:
// image names, layer directories, info, blob, files of the layers), and that
// Go's profiler is not served on metrics_address unless asked for.
func TestOtherUsersSeeNothing(t *testing.T) {
	u := newLocalUser(t)
	img := cachedImage(t, exposureImage())
	reg := testenv.StartRegistry(t, testenv.RegistryOptions{})
	ref := push(t, reg, img, "lazypull/exposure", "v1")
	runLazypull(t, map[string]any{
		"registry": map[string]any{"insecure": []string{reg.Host}},
		"index":    map[string]any{"min_layer_size": "4MiB"},
	}, "index", "--push", ref)

	// A directory every user may enter, as /var/lib is.
	base, err := os.MkdirTemp("", "lzp-exposure-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(base) })
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(base, "harness") // config and log of the test harness
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	varLib := filepath.Join(base, "var", "lib")
	if err := os.MkdirAll(varLib, 0o755); err != nil {
		t.Fatal(err)
	}
	// The unit's layout: the mount inside root_dir.
	root := filepath.Join(varLib, "lazypull")
	mnt := filepath.Join(root, "store")
	unitPrelude(t, root, mnt)

	metrics := freeAddr(t)
	d := testenv.StartDaemon(t, testenv.DaemonOptions{Dir: dir, Root: root, MountPoint: mnt, Config: map[string]any{
		"metrics_address": metrics,
		"registry":        map[string]any{"insecure": []string{reg.Host}},
		"index":           map[string]any{"min_layer_size": "4MiB"},
	}})
	if d.Root != root || d.MountPoint != mnt {
		t.Fatalf("harness layout changed: root %s mount %s", d.Root, d.MountPoint)
	}
	p := testenv.NewPodman(t, testenv.PodmanOptions{InsecureRegistries: []string{reg.Host}, StorageOpts: []string{d.ALSOption()}})
	if _, err := p.Pull(ref); err != nil {
		t.Fatalf("lazy pull: %v\n%s", err, d.LogTail(30))
	}
	indexed := indexedLayers(img, 4<<20)
	if links := alsDiffLinks(t, p.Root, d.MountPoint); len(links) != len(indexed) {
		t.Fatalf("%d layer diffs point into the store, want %d", len(links), len(indexed))
	}
	want, err := img.ExpectedTree()
	if err != nil {
		t.Fatal(err)
	}
	files := regularFiles(want, "usr/lib/base", 2, false)
	checkFilesInContainer(t, p, ref, want, files)
	// A container's processes running as another user read the layers
	// through overlay, which reads lower layers with podman's credentials:
	// the mount needs no allow_other for them.
	var other string
	for _, f := range regularFiles(want, "usr/lib/base", 20, false)[2:] {
		if want[f].Mode&0o004 != 0 {
			other = f
			break
		}
	}
	if other == "" {
		t.Fatal("no world-readable file in the image")
	}
	out, stderr, err := p.Run("run", "--rm", "--network", "none", "--user", "1000:1000", ref, "/bin/sha256sum", "/"+other)
	if sum, _, _ := strings.Cut(out, " "); err != nil || sum != want[other].SHA256 {
		t.Errorf("sha256sum /%s in a container as uid 1000 = %q, %v (%s); want %s", other, sum, err, stderr, want[other].SHA256)
	}

	// What root sees: the paths the user tries.
	refDir := filepath.Join(mnt, base64.StdEncoding.EncodeToString([]byte(ref)))
	layerDir := filepath.Join(refDir, indexed[0].Digest.String())
	var spanFiles []string
	_ = filepath.WalkDir(root, func(path string, e os.DirEntry, err error) error {
		if path == mnt {
			return filepath.SkipDir // the store's own files, not the mount's
		}
		if err == nil && e.Type().IsRegular() {
			spanFiles = append(spanFiles, path)
		}
		return nil
	})
	if len(spanFiles) == 0 {
		t.Fatalf("root_dir %s holds no files after a lazy pull", root)
	}
	for _, p := range []string{root, mnt} {
		fi, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: %v", p, fi.Mode())
	}

	attempts := [][]string{
		{"ls", root},
		{"ls", mnt},
		{"ls", refDir},
		{"ls", layerDir},
		{"ls", filepath.Join(layerDir, "diff")},
		{"cat", filepath.Join(layerDir, "info")},
		{"head", "-c", "1", filepath.Join(layerDir, "blob")},
		{"cat", filepath.Join(layerDir, "diff", files[0])},
		{"stat", filepath.Join(layerDir, "diff", files[0])},
	}
	for _, f := range spanFiles[:min(len(spanFiles), 20)] {
		attempts = append(attempts, []string{"head", "-c", "1", f})
	}
	for _, a := range attempts {
		if out, err := u.run(a...); err == nil {
			t.Errorf("user %s ran %q: succeeded, want permission denied:\n%s", u.name, a, out)
		}
	}
	// Nothing below the two directories shows up in a walk.
	out, _ = u.run("find", root, mnt)
	var found []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line != root && line != mnt && !strings.Contains(line, "Permission denied") {
			found = append(found, line)
		}
	}
	if len(found) > 0 {
		t.Errorf("user %s finds %d paths, e.g. %q", u.name, len(found), found[:min(len(found), 5)])
	}

	// Metrics are served; the profiler is not (pprof = false by default).
	get := func(path string) int {
		resp, err := http.Get("http://" + metrics + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := get("/metrics"); code != http.StatusOK {
		t.Errorf("GET /metrics = %d, want 200", code)
	}
	for _, path := range []string{"/debug/pprof/", "/debug/pprof/profile?seconds=1", "/debug/pprof/symbol"} {
		if code := get(path); code != http.StatusNotFound {
			t.Errorf("GET %s = %d, want 404 (pprof off by default)", path, code)
		}
	}
}

// TestPprofWhenAskedFor: with pprof = true the profiler is on
// metrics_address (so that TestOtherUsersSeeNothing's 404 means "off").
func TestPprofWhenAskedFor(t *testing.T) {
	metrics := freeAddr(t)
	testenv.StartDaemon(t, testenv.DaemonOptions{Config: map[string]any{"metrics_address": metrics, "pprof": true}})
	resp, err := http.Get("http://" + metrics + "/debug/pprof/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET /debug/pprof/ with pprof = true: %d, want 200", resp.StatusCode)
	}
}

// TestRootDirRefusedWhenOpen: a root_dir (or mount point) that group or
// others may enter is refused at start, with the chmod that fixes it.
func TestRootDirRefusedWhenOpen(t *testing.T) {
	for _, which := range []string{"root", "store"} {
		t.Run(which, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.Mkdir(filepath.Join(dir, which), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(filepath.Join(dir, which), 0o755); err != nil {
				t.Fatal(err)
			}
			d, err := testenv.NewDaemon(testenv.LazypullBinary(t), testenv.DaemonOptions{Dir: dir})
			if err == nil {
				_ = d.Stop()
			}
			want := "chmod 0700 " + filepath.Join(dir, which)
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("lazypull serve with %s mode 0755: %v, want a refusal naming %q", which, err, want)
			}
		})
	}
}

// TestSecondProcessOnRootDir: while a daemon has root_dir, another `lazypull
// serve` and a `lazypull index` on the same root_dir are refused at once,
// naming the holder, and touch nothing there (the daemon's persisted
// handed-over credentials stay).
func TestSecondProcessOnRootDir(t *testing.T) {
	d := testenv.StartDaemon(t, testenv.DaemonOptions{Config: map[string]any{
		"registry": map[string]any{"handover_persist": true},
	}})
	runAuthHelper(t, d, helperInput(t, "127.0.0.1:5999/lazypull/private:v1", "alice", alicePassword, ""))
	handover := filepath.Join(d.Root, "auth", "handover.json")
	before, err := os.ReadFile(handover)
	if err != nil {
		t.Fatalf("handed-over credentials file: %v", err)
	}
	// The second process reads another configuration on the same
	// root_dir: memory-only credentials, which would delete the file.
	cfg := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("root_dir = %q\nmount_point = %q\n", d.Root, filepath.Join(t.TempDir(), "store2"))), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"serve"}, {"index", "127.0.0.1:5999/lazypull/private:v1"}} {
		cmd := exec.Command(d.Bin, append([]string{"--config", cfg}, args...)...)
		done := make(chan struct{})
		var out []byte
		go func() { out, err = cmd.CombinedOutput(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-done
			t.Fatalf("lazypull %s on a root_dir in use still runs after 20 s:\n%s", args[0], out)
		}
		msg := string(out)
		if err == nil || !strings.Contains(msg, "in use by another lazypull process") || !strings.Contains(msg, "pid "+strconv.Itoa(d.Pid())) {
			t.Errorf("lazypull %s on a root_dir in use: %v\n%s\nwant a refusal naming pid %d", args[0], err, msg, d.Pid())
		} else {
			t.Logf("lazypull %s: %s", args[0], strings.TrimSpace(msg))
		}
	}
	after, err := os.ReadFile(handover)
	if err != nil || string(after) != string(before) {
		t.Errorf("handed-over credentials file after the refused processes: %v (changed: %v)", err, string(after) != string(before))
	}
	if _, err := d.StatusErr(); err != nil {
		t.Errorf("the daemon after the refused processes: %v", err)
	}
}

// TestLogoutRevokesServedLayers: after `podman logout`, a layer directory
// of a private image already served (and cached by the kernel and the
// daemon) is refused at its next lookup, once the kernel asks again (layer
// directory entries live 5 s); after a new login it is served again.
func TestLogoutRevokesServedLayers(t *testing.T) {
	img := cachedImage(t, privateImage())
	indexed := indexedLayers(img, authMinLayer)
	r := startPrivateRegistry(t, time.Minute)
	r.Tokens.AddUser("alice", alicePassword, map[string][]string{privateRepo: {"pull", "push"}})
	push(t, r.Reg, img, privateRepo, "v1")
	ref := r.Ref(privateRepo, "v1")

	authFile := filepath.Join(t.TempDir(), "auth.json")
	d, p := r.loggedIn(t, []string{"REGISTRY_AUTH_FILE=" + authFile})
	indexPrivate(t, r.Host, authFile, ref)
	if _, err := p.Pull(ref); err != nil {
		t.Fatalf("lazy pull: %v\n%s", err, d.LogTail(30))
	}
	if links := alsDiffLinks(t, p.Root, d.MountPoint); len(links) != len(indexed) {
		t.Fatalf("%d layer diffs point into the store, want %d", len(links), len(indexed))
	}
	for _, l := range indexed {
		if !alsServes(t, d, ref, l.Digest) {
			t.Fatalf("layer %s of %s not served after the pull", l.Digest, ref)
		}
	}

	if _, _, err := p.Run("logout", r.Host); err != nil {
		t.Fatalf("podman logout: %v", err)
	}
	time.Sleep(6 * time.Second) // the kernel's entry for the layer directories expires
	for _, l := range indexed {
		if alsServes(t, d, ref, l.Digest) {
			t.Errorf("after podman logout, layer %s of %s is still served, want ENOENT", l.Digest, ref)
		}
	}
	if log, _ := os.ReadFile(d.LogPath); !strings.Contains(string(log), "no longer authorized") {
		t.Errorf("daemon log does not say a layer directory was no longer authorized:\n%s", d.LogTail(20))
	}

	podmanLogin(t, p, r.Host, "alice", alicePassword)
	for _, l := range indexed {
		if !alsServes(t, d, ref, l.Digest) {
			t.Errorf("after a new login, layer %s of %s is not served:\n%s", l.Digest, ref, d.LogTail(20))
		}
	}
}

// TestAnonymousHandoverEvicts: credentials podman handed over (the daemon's
// own auth files hold none) serve a private image; when podman then reads
// the image anonymously (after a logout), the auth helper hands over no
// credentials: they are deleted, and the image's layer directories go at
// once, without waiting for the kernel's entries to expire.
func TestAnonymousHandoverEvicts(t *testing.T) {
	img := cachedImage(t, privateImage())
	indexed := indexedLayers(img, authMinLayer)
	r := startPrivateRegistry(t, time.Minute)
	r.Tokens.AddUser("alice", alicePassword, map[string][]string{privateRepo: {"pull", "push"}})
	push(t, r.Reg, img, privateRepo, "v1")
	ref := r.Ref(privateRepo, "v1")
	dir := t.TempDir()
	podmanAuth, daemonAuth := filepath.Join(dir, "podman-auth.json"), filepath.Join(dir, "daemon-auth.json")
	writeAuthFile(t, podmanAuth, r.Host, "alice", alicePassword)
	writeAuthFile(t, daemonAuth, "", "", "")
	indexPrivate(t, r.Host, podmanAuth, ref)
	d := testenv.StartDaemon(t, testenv.DaemonOptions{Config: map[string]any{
		"registry": map[string]any{"insecure": []string{r.Host}, "auth_file": daemonAuth},
		"index":    map[string]any{"min_layer_size": "4MiB"},
		"prefetch": map[string]any{"enabled": false}, "verification": map[string]any{"enabled": false},
	}})
	runAuthHelper(t, d, helperInput(t, ref, "alice", alicePassword, ""))
	for _, l := range indexed {
		if !alsServes(t, d, ref, l.Digest) {
			t.Fatalf("layer %s of %s not served with handed-over credentials:\n%s", l.Digest, ref, d.LogTail(20))
		}
	}
	runAuthHelper(t, d, helperInput(t, ref, "", "", ""))
	if got := d.Status(t).Auth.HandedOver; got != 0 {
		t.Errorf("status: %d handed-over references after the anonymous handover, want 0", got)
	}
	for _, l := range indexed {
		if alsServes(t, d, ref, l.Digest) {
			t.Errorf("layer %s of %s still served right after the anonymous handover, want ENOENT", l.Digest, ref)
		}
	}
}

// TestInsecureRedirectKeepsTLS: a registry the daemon may reach without TLS
// (plain http, registry.insecure) redirects blob requests to another host
// that speaks TLS with a certificate of a CA the daemon does not trust: that
// host's certificate is still verified, so the layer is not served (its
// index cannot be fetched); a daemon that trusts the CA (certs.d, as podman
// would) serves it through the same redirect.
func TestInsecureRedirectKeepsTLS(t *testing.T) {
	img := cachedImage(t, exposureImage())
	reg := testenv.StartRegistry(t, testenv.RegistryOptions{})
	push(t, reg, img, "lazypull/redirect", "v1")
	runLazypull(t, map[string]any{
		"registry": map[string]any{"insecure": []string{reg.Host}},
		"index":    map[string]any{"min_layer_size": "4MiB"},
	}, "index", "--push", reg.Host+"/lazypull/redirect:v1")
	upstream, err := url.Parse(reg.URL)
	if err != nil {
		t.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(upstream)

	// Object storage: TLS with a certificate of a private CA.
	ca := testenv.NewTestCA(t, "redirect-target")
	tlsCfg, err := ca.ServerConfig(false, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	var storageRequests atomic.Int64
	storage := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		storageRequests.Add(1)
		proxy.ServeHTTP(w, r)
	}))
	storage.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshakes
	storage.TLS = tlsCfg
	storage.StartTLS()
	t.Cleanup(storage.Close)
	storageHost := strings.TrimPrefix(storage.URL, "https://")

	// The insecure registry: plain http, blobs redirected to the storage.
	var redirects atomic.Int64
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/blobs/sha256:") && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
			redirects.Add(1)
			http.Redirect(w, r, storage.URL+r.URL.RequestURI(), http.StatusTemporaryRedirect)
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(front.Close)
	frontHost := strings.TrimPrefix(front.URL, "http://")
	ref := frontHost + "/lazypull/redirect:v1"
	indexed := indexedLayers(img, 4<<20)

	daemon := func(certsDir string) *testenv.Daemon {
		return testenv.StartDaemon(t, testenv.DaemonOptions{Config: map[string]any{
			"registry": map[string]any{"insecure": []string{frontHost}, "certs_dir": certsDir},
			"index":    map[string]any{"min_layer_size": "4MiB", "on_demand": "off"},
			"prefetch": map[string]any{"enabled": false}, "verification": map[string]any{"enabled": false},
		}})
	}

	untrusting := daemon(t.TempDir())
	if alsServes(t, untrusting, ref, indexed[0].Digest) {
		t.Errorf("a layer whose blobs are redirected from the insecure registry to a host with an untrusted certificate is served")
	}
	if redirects.Load() == 0 {
		t.Fatalf("the insecure registry redirected nothing: the test did not reach the redirect\n%s", untrusting.LogTail(20))
	}
	if n := storageRequests.Load(); n != 0 {
		t.Errorf("the redirect target answered %d requests of a daemon that does not trust its certificate, want 0", n)
	}
	if reason := notServedReason(untrusting, ref); !strings.Contains(reason, "certificate") || !strings.Contains(reason, storageHost) {
		t.Errorf("daemon log for the lookup = %q, want a certificate error for %s", reason, storageHost)
	}

	certs := t.TempDir()
	if _, err := ca.WriteCertsD(certs, storageHost, testenv.CertsDirOptions{CA: true}); err != nil {
		t.Fatal(err)
	}
	trusting := daemon(certs)
	if !alsServes(t, trusting, ref, indexed[0].Digest) {
		t.Errorf("a daemon trusting the redirect target's CA does not serve the layer:\n%s", trusting.LogTail(20))
	}
	if storageRequests.Load() == 0 {
		t.Errorf("the trusting daemon's blob requests never reached the redirect target")
	}
}
