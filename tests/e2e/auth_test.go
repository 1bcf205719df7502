package e2e

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/authbridge/authtest"
	"github.com/lazypull/lazypull/layerstore/control"
	"github.com/lazypull/lazypull/tests/imagegen"
	"github.com/lazypull/lazypull/tests/testenv"
)

// The accounts and repositories of the private registry. The passwords are
// distinctive so that logs and status output can be searched for them.
const (
	privateRepo   = "lazypull/private"
	otherRepo     = "lazypull/other"
	alicePassword = "alice-Pw-9f3c7e21d4"
	bobPassword   = "bob-Pw-0b8e5d64aa"
	aliceIDToken  = "alice-IdToken-5e0c2f8b71"
	// authMinLayer is index.min_layer_size for the indexer and the daemons.
	authMinLayer = 4 << 20
)

// privateImage is a small image for the credential tests (about 32 MB
// compressed): two layers above authMinLayer (busybox is in the first, so a
// container runs from lazily served layers) and a small top layer that
// podman pulls itself.
func privateImage() imagegen.Options {
	return imagegen.Options{Name: "auth-private", Seed: 41, Layers: []imagegen.LayerSpec{
		{Compression: imagegen.GzipParallel, Dir: "usr/lib/base", Busybox: true, SmallFiles: 100,
			Random: []int64{6 << 20}, Compressible: []int64{4 << 20}},
		{Compression: imagegen.Gzip, Dir: "opt/app", SmallFiles: 200,
			Random: []int64{16 << 20}, Compressible: []int64{8 << 20}},
		{Compression: imagegen.Gzip, Dir: "srv/top", SmallFiles: 10},
	}}
}

// privateRegistry is a docker-registry that serves authenticated clients
// only. Clients talk to a front server on 127.0.0.1 that hands every request
// to an authtest.AuthProxy (Bearer tokens from a TokenServer); authorized
// requests pass through a CountingProxy to the registry. Requests of lazypull
// (User-Agent "lazypull/...") and of everyone else (podman) go to two
// AuthProxies sharing the token server, so that their counters — tokens that
// arrived expired above all — belong to one client each.
type privateRegistry struct {
	// Host is the host:port of the front server, the registry part of the
	// references clients use.
	Host string
	// Reg is the registry itself, without authentication (for pushing test
	// images).
	Reg *testenv.Registry
	// Count counts what authorized clients received.
	Count *testenv.CountingProxy
	// Tokens issues the tokens.
	Tokens *authtest.TokenServer
	// Lazypull and Podman are the AuthProxies of lazypull's requests and of
	// the others.
	Lazypull, Podman *authtest.AuthProxy
}

// startPrivateRegistry starts a private registry whose tokens live for
// lifetime.
func startPrivateRegistry(t *testing.T, lifetime time.Duration) *privateRegistry {
	t.Helper()
	r := &privateRegistry{Reg: testenv.StartRegistry(t, testenv.RegistryOptions{})}
	r.Count = testenv.StartCountingProxy(t, r.Reg.URL)
	r.Tokens = authtest.NewTokenServer(t, authtest.TokenServerConfig{Lifetime: lifetime})
	cfg := authtest.ProxyConfig{UpstreamURL: r.Count.URL, TokenServer: r.Tokens}
	r.Lazypull = authtest.NewAuthProxy(t, cfg)
	r.Podman = authtest.NewAuthProxy(t, cfg)
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if strings.HasPrefix(req.UserAgent(), "lazypull/") {
			r.Lazypull.ServeHTTP(w, req)
			return
		}
		r.Podman.ServeHTTP(w, req)
	}))
	t.Cleanup(front.Close)
	r.Host = strings.TrimPrefix(front.URL, "http://")
	return r
}

// Ref returns the reference of repo:tag (or repo@digest) at the front server.
func (r *privateRegistry) Ref(repo, tagOrDigest string) string {
	if strings.Contains(tagOrDigest, ":") {
		return r.Host + "/" + repo + "@" + tagOrDigest
	}
	return r.Host + "/" + repo + ":" + tagOrDigest
}

// loggedIn starts, for the private registry, a daemon and a podman with
// the same environment env (which says where their credentials are), the
// daemon without background fetches, and logs podman in as alice.
func (r *privateRegistry) loggedIn(t *testing.T, env []string) (*testenv.Daemon, *testenv.Podman) {
	t.Helper()
	d := testenv.StartDaemon(t, testenv.DaemonOptions{Env: env, Config: map[string]any{
		"registry": map[string]any{"insecure": []string{r.Host}},
		"index":    map[string]any{"min_layer_size": "4MiB"},
		"prefetch": map[string]any{"enabled": false}, "verification": map[string]any{"enabled": false},
	}})
	p := testenv.NewPodman(t, testenv.PodmanOptions{InsecureRegistries: []string{r.Host}, StorageOpts: []string{d.ALSOption()}, Env: env})
	podmanLogin(t, p, r.Host, "alice", alicePassword)
	return d, p
}

// podmanLogin runs `podman login` (extra flags before the host).
func podmanLogin(t *testing.T, p *testenv.Podman, host, user, password string, extra ...string) {
	t.Helper()
	args := append([]string{"login", "--tls-verify=false", "--username", user, "--password", password}, extra...)
	if _, _, err := p.Run(append(args, host)...); err != nil {
		t.Fatalf("podman login as %s: %v", user, err)
	}
}

// writeAuthFile writes an auth.json as `podman login` does, with a user and
// password for host (none when user is "").
func writeAuthFile(t *testing.T, path, host, user, password string) {
	t.Helper()
	auths := map[string]any{}
	if user != "" {
		auths[host] = map[string]string{"auth": base64.StdEncoding.EncodeToString([]byte(user + ":" + password))}
	}
	b, err := json.Marshal(map[string]any{"auths": auths})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// indexPrivate indexes ref on "another machine" with the credentials of
// authFile and pushes the SOCI index to ref's repository.
func indexPrivate(t *testing.T, host, authFile, ref string) {
	t.Helper()
	out := runLazypull(t, map[string]any{
		"registry": map[string]any{"insecure": []string{host}, "auth_file": authFile},
		"index":    map[string]any{"min_layer_size": "4MiB"},
	}, "index", "--push", ref)
	t.Logf("lazypull index: %s", strings.TrimSpace(out))
}

// alsServes asks the daemon's store for a layer of ref the way
// containers/storage does (a stat of <mnt>/<base64(ref)>/<digest>/diff) and
// reports whether the store serves it.
func alsServes(t *testing.T, d *testenv.Daemon, ref string, dgst digest.Digest) bool {
	t.Helper()
	p := filepath.Join(d.MountPoint, base64.StdEncoding.EncodeToString([]byte(ref)), dgst.String(), "diff")
	_, err := os.Stat(p)
	switch {
	case err == nil:
		return true
	case errors.Is(err, fs.ErrNotExist):
		return false
	}
	t.Fatalf("stat %s: %v", p, err)
	return false
}

// notServedReason returns the daemon's last "not served" log line for ref
// ("" if there is none).
func notServedReason(d *testenv.Daemon, ref string) string {
	b, _ := os.ReadFile(d.LogPath)
	last := ""
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, "not served lazily") && strings.Contains(line, ref) {
			last = line
		}
	}
	return last
}

// checkRefRefused asserts that the daemon does not serve any of layers for
// ref and that it said why: its manifest request was unauthorized.
func checkRefRefused(t *testing.T, d *testenv.Daemon, ref string, layers []imagegen.Layer) {
	t.Helper()
	for _, l := range layers {
		if alsServes(t, d, ref, l.Digest) {
			t.Errorf("the store serves layer %s of %s, want ENOENT", l.Digest, ref)
		}
	}
	reason := notServedReason(d, ref)
	if !strings.Contains(reason, "unauthorized") || !strings.Contains(reason, "/manifests/") {
		t.Errorf("daemon log for the lookup of %s = %q, want a not-served line saying its manifest request was unauthorized", ref, reason)
	}
}

// layerRefs returns every image reference the daemon serves layers for.
func layerRefs(st *control.Status) map[string]bool {
	refs := map[string]bool{}
	for _, l := range st.Layers {
		for _, r := range l.Refs {
			refs[r] = true
		}
	}
	return refs
}

// TestPrivateImageWithPodmanCredentials: a private image in a registry with
// Bearer token authentication is pulled lazily by stock podman with the
// credentials `podman login` wrote (one auth.json, REGISTRY_AUTH_FILE for
// both podman and the daemon). Without credentials, or with credentials for
// another repository only, podman's pull fails with its normal error and the
// daemon serves nothing of the image, however much of it it has cached: it
// resolves the image with the current credentials for every new reference.
func TestPrivateImageWithPodmanCredentials(t *testing.T) {
	img := cachedImage(t, privateImage())
	indexed := indexedLayers(img, authMinLayer)
	r := startPrivateRegistry(t, time.Minute)
	r.Tokens.AddUser("alice", alicePassword, map[string][]string{privateRepo: {"pull", "push"}})
	r.Tokens.AddUser("bob", bobPassword, map[string][]string{otherRepo: {"pull"}})
	push(t, r.Reg, img, privateRepo, "v1")
	push(t, r.Reg, img, privateRepo, "v2")
	push(t, r.Reg, img, otherRepo, "v1")
	ref, ref2 := r.Ref(privateRepo, "v1"), r.Ref(privateRepo, "v2")
	byDigest := r.Ref(privateRepo, img.ManifestDigest.String())

	authFile := filepath.Join(t.TempDir(), "auth.json")
	d, p := r.loggedIn(t, []string{"REGISTRY_AUTH_FILE=" + authFile})
	indexPrivate(t, r.Host, authFile, ref)

	// Alice's lazy pull.
	r.Count.Reset()
	if _, err := p.Pull(ref); err != nil {
		t.Fatalf("lazy pull: %v\n%s", err, d.LogTail(30))
	}
	pulled, total := r.Count.Stats().BlobBytes(), img.CompressedSize()
	t.Logf("lazy pull of the private image fetched %s of blobs for a %s image (%.2f %%)", mib(pulled), mib(total), 100*float64(pulled)/float64(total))
	if pulled*100 >= total*5 {
		t.Errorf("lazy pull fetched %d bytes, want < 5 %% of %d", pulled, total)
	}
	links := alsDiffLinks(t, p.Root, d.MountPoint)
	if len(links) != len(indexed) {
		t.Errorf("%d layer diffs point into the store, want %d (the indexed layers): %v", len(links), len(indexed), links)
	}
	want, err := img.ExpectedTree()
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, dir := range []string{"usr/lib/base", "opt/app", "srv/top"} {
		paths = append(paths, regularFiles(want, dir, 3, false)...)
	}
	paths = append(paths, regularFiles(want, "opt/app", 1, true)...)
	checkFilesInContainer(t, p, ref, want, paths)
	served := len(d.Status(t).Layers)
	if served != len(indexed) {
		t.Errorf("daemon serves %d layers, want %d", served, len(indexed))
	}

	// Logged out: podman fails as usual and the daemon has no credentials.
	if _, _, err := p.Run("logout", r.Host); err != nil {
		t.Fatalf("podman logout: %v", err)
	}
	// Right away: the daemon's tokens are still valid for most of their
	// minute, but a new lookup proves access with the credentials as they
	// are now.
	before := r.Lazypull.Stats()
	_, err = p.Pull(ref2)
	if err == nil || !strings.Contains(strings.ToLower(err.Error()), "unauthorized") {
		t.Errorf("podman pull %s after logout: %v, want podman's unauthorized error", ref2, err)
	} else {
		t.Logf("podman pull after logout: %v", err)
	}
	checkRefRefused(t, d, ref2, indexed)
	checkRefRefused(t, d, byDigest, indexed)
	if got := alsDiffLinks(t, p.Root, d.MountPoint); len(got) != len(links) {
		t.Errorf("%d diffs point into the store after the refused pull, want the %d of the first pull", len(got), len(links))
	}
	after := r.Lazypull.Stats()
	if after.NoAuth == before.NoAuth && after.Denied == before.Denied {
		t.Errorf("the daemon's registry requests after logout were never refused (proxy stats %+v)", after)
	}

	// Bob may read another repository only: the same layers, cached by the
	// daemon, are served to him through that repository, never through
	// the private one.
	podmanLogin(t, p, r.Host, "bob", bobPassword)
	if _, err := p.Pull(ref2); err == nil || !strings.Contains(strings.ToLower(err.Error()), "unauthorized") {
		t.Errorf("podman pull %s as bob: %v, want podman's unauthorized error", ref2, err)
	}
	checkRefRefused(t, d, ref2, indexed)
	checkRefRefused(t, d, byDigest, indexed)
	bobs := testenv.NewPodman(t, testenv.PodmanOptions{InsecureRegistries: []string{r.Host}, StorageOpts: []string{d.ALSOption()}, Env: []string{"REGISTRY_AUTH_FILE=" + authFile}})
	otherRef := r.Ref(otherRepo, "v1")
	if _, err := bobs.Pull(otherRef); err != nil {
		t.Fatalf("bob's lazy pull of %s: %v\n%s", otherRef, err, d.LogTail(30))
	}
	if got := alsDiffLinks(t, bobs.Root, d.MountPoint); len(got) != len(indexed) {
		t.Errorf("bob's pull of %s: %d diffs point into the store, want %d", otherRef, len(got), len(indexed))
	}

	// (An index found through the private repository serves that
	// repository only until verified: bob's repository has its own, so the
	// same layers may be listed once per repository.)
	st := d.Status(t)
	digests := map[string]bool{}
	for _, l := range st.Layers {
		digests[l.Digest] = true
	}
	if len(digests) != served {
		t.Errorf("daemon serves %d distinct layers after the refused lookups, want still %d", len(digests), served)
	}
	refs := layerRefs(st)
	for _, bad := range []string{ref2, byDigest} {
		if refs[bad] {
			t.Errorf("daemon lists %s among the references of its layers: %v", bad, refs)
		}
	}
	if !refs[otherRef] {
		t.Errorf("daemon does not list %s among the references of its layers: %v", otherRef, refs)
	}
	t.Logf("daemon's registry traffic (lazypull proxy): %+v; podman's: %+v; token server: %+v; daemon auth: %+v",
		r.Lazypull.Stats(), r.Podman.Stats(), r.Tokens.Stats(), st.Auth)
}

// TestPrivateImageDefaultAuthPath: `podman login` without --authfile or
// REGISTRY_AUTH_FILE writes ${XDG_RUNTIME_DIR}/containers/auth.json, and a
// daemon without registry.auth_file finds it there (podman's search order).
func TestPrivateImageDefaultAuthPath(t *testing.T) {
	img := cachedImage(t, privateImage())
	indexed := indexedLayers(img, authMinLayer)
	r := startPrivateRegistry(t, time.Minute)
	r.Tokens.AddUser("alice", alicePassword, map[string][]string{privateRepo: {"pull", "push"}})
	push(t, r.Reg, img, privateRepo, "v1")
	ref := r.Ref(privateRepo, "v1")

	runtimeDir := t.TempDir()
	d, p := r.loggedIn(t, []string{"XDG_RUNTIME_DIR=" + runtimeDir, "REGISTRY_AUTH_FILE="})
	authFile := filepath.Join(runtimeDir, "containers", "auth.json")
	if _, err := os.Stat(authFile); err != nil {
		t.Fatalf("podman login did not write the default auth file: %v", err)
	}
	indexPrivate(t, r.Host, authFile, ref)

	if _, err := p.Pull(ref); err != nil {
		t.Fatalf("lazy pull: %v\n%s", err, d.LogTail(30))
	}
	if links := alsDiffLinks(t, p.Root, d.MountPoint); len(links) != len(indexed) {
		t.Errorf("%d layer diffs point into the store, want %d (the indexed layers): %v", len(links), len(indexed), links)
	}
	want, err := img.ExpectedTree()
	if err != nil {
		t.Fatal(err)
	}
	checkFilesInContainer(t, p, ref, want, append(regularFiles(want, "opt/app", 2, false), regularFiles(want, "usr/lib/base", 1, true)...))
}

// runAuthHelper runs `lazypull-auth-helper` (a symlink to the binary, the
// name containers/image runs) with input on stdin. containers/image passes
// no arguments and the helper then reads /etc/lazypull/config.toml; the test
// names the daemon's configuration instead.
func runAuthHelper(t *testing.T, d *testenv.Daemon, input []byte) string {
	t.Helper()
	link := filepath.Join(t.TempDir(), "lazypull-auth-helper")
	if err := os.Symlink(d.Bin, link); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(link, "--config", d.ConfigPath)
	cmd.Stdin = bytes.NewReader(input)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("lazypull-auth-helper: %v\n%s", err, out)
	}
	return string(out)
}

// helperInput is what containers/image (docker/docker_image_src.go of
// v5.36) writes to the additional-layer-store-auth-helper: the reference it
// pulls and the credentials it uses, empty fields left out.
func helperInput(t *testing.T, ref, user, password, identityToken string) []byte {
	t.Helper()
	b, err := json.Marshal(map[string]struct {
		Username      string `json:"username,omitempty"`
		Password      string `json:"password,omitempty"`
		IdentityToken string `json:"identityToken,omitempty"`
	}{ref: {Username: user, Password: password, IdentityToken: identityToken}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestAuthHelperHandover: a daemon whose auth files hold nothing for the
// registry serves exactly the image references whose credentials
// `lazypull-auth-helper` handed over (a password for one tag, an identity
// token for the image by digest), not another reference of the same image;
// with registry.handover_persist the credentials survive a restart in a 0600
// file (by default they live in memory only: authbridge's tests), and
// neither the log nor the status ever shows the password.
func TestAuthHelperHandover(t *testing.T) {
	img := cachedImage(t, privateImage())
	indexed := indexedLayers(img, authMinLayer)
	r := startPrivateRegistry(t, time.Minute)
	r.Tokens.AddUser("alice", alicePassword, map[string][]string{privateRepo: {"pull", "push"}})
	r.Tokens.AddIdentityToken("alice", aliceIDToken)
	push(t, r.Reg, img, privateRepo, "v1")
	push(t, r.Reg, img, privateRepo, "v2")
	ref, ref2 := r.Ref(privateRepo, "v1"), r.Ref(privateRepo, "v2")
	byDigest := r.Ref(privateRepo, img.ManifestDigest.String())

	dir := t.TempDir()
	podmanAuth, daemonAuth := filepath.Join(dir, "podman-auth.json"), filepath.Join(dir, "daemon-auth.json")
	writeAuthFile(t, podmanAuth, r.Host, "alice", alicePassword)
	writeAuthFile(t, daemonAuth, "", "", "")
	indexPrivate(t, r.Host, podmanAuth, ref)

	d := testenv.StartDaemon(t, testenv.DaemonOptions{Config: map[string]any{
		"registry": map[string]any{"insecure": []string{r.Host}, "auth_file": daemonAuth, "handover_persist": true},
		"index":    map[string]any{"min_layer_size": "4MiB"},
		"prefetch": map[string]any{"enabled": false}, "verification": map[string]any{"enabled": false},
	}})
	newPodman := func() *testenv.Podman {
		return testenv.NewPodman(t, testenv.PodmanOptions{InsecureRegistries: []string{r.Host}, StorageOpts: []string{d.ALSOption()},
			Env: []string{"REGISTRY_AUTH_FILE=" + podmanAuth}})
	}
	want, err := img.ExpectedTree()
	if err != nil {
		t.Fatal(err)
	}
	paths := append(regularFiles(want, "opt/app", 2, false), regularFiles(want, "usr/lib/base", 1, true)...)

	// Without handed-over credentials the daemon cannot read the image.
	checkRefRefused(t, d, ref, indexed[:1])

	var helperOut strings.Builder
	helperOut.WriteString(runAuthHelper(t, d, helperInput(t, ref, "alice", alicePassword, "")))
	helperOut.WriteString(runAuthHelper(t, d, helperInput(t, byDigest, "", "", aliceIDToken)))
	if got := d.Status(t).Auth.HandedOver; got != 2 {
		t.Errorf("status: %d handed-over references, want 2", got)
	}

	lazyPull := func(ref string, wantLinks int) *testenv.Podman {
		t.Helper()
		p := newPodman()
		if _, err := p.Pull(ref); err != nil {
			t.Fatalf("pull %s: %v\n%s", ref, err, d.LogTail(30))
		}
		if links := alsDiffLinks(t, p.Root, d.MountPoint); len(links) != wantLinks {
			t.Errorf("pull %s: %d layer diffs point into the store, want %d", ref, len(links), wantLinks)
		}
		return p
	}
	p := lazyPull(ref, len(indexed))
	checkFilesInContainer(t, p, ref, want, paths)
	lazyPull(byDigest, len(indexed))
	// Podman can read v2 (its auth file has alice), the daemon cannot.
	lazyPull(ref2, 0)
	if reason := notServedReason(d, ref2); !strings.Contains(strings.ToLower(reason), "unauthorized") {
		t.Errorf("daemon log for %s = %q, want a not-served line saying unauthorized", ref2, reason)
	}

	// Restart: the credentials come back from root_dir/auth.
	if err := d.Stop(); err != nil {
		t.Fatal(err)
	}
	handover := filepath.Join(d.Root, "auth", "handover.json")
	fi, err := os.Stat(handover)
	if err != nil {
		t.Fatalf("handed-over credentials file: %v", err)
	}
	if mode := fi.Mode().Perm(); mode != 0o600 {
		t.Errorf("%s has mode %o, want 600", handover, mode)
	}
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	if got := d.Status(t).Auth.HandedOver; got != 2 {
		t.Errorf("status after restart: %d handed-over references, want 2", got)
	}
	p = lazyPull(ref, len(indexed))
	checkFilesInContainer(t, p, ref, want, paths[:1])

	// No secret anywhere but in the credentials file.
	status, err := d.Run("status", "--json")
	if err != nil {
		t.Fatal(err)
	}
	logs, err := os.ReadFile(d.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	for what, text := range map[string]string{"daemon log": string(logs), "lazypull status --json": status, "auth helper output": helperOut.String()} {
		for _, secret := range []string{alicePassword, aliceIDToken} {
			if strings.Contains(text, secret) {
				t.Errorf("%s contains a secret handed over (%q...)", what, secret[:8])
			}
		}
	}
	err = filepath.WalkDir(d.Root, func(path string, e fs.DirEntry, err error) error {
		if err != nil || !e.Type().IsRegular() || path == handover {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if bytes.Contains(b, []byte(alicePassword)) || bytes.Contains(b, []byte(aliceIDToken)) {
			t.Errorf("%s contains a secret handed over", path)
		}
		return nil
	})
	if err != nil {
		t.Errorf("searching root_dir for secrets: %v", err)
	}
	tokens := r.Tokens.Stats()
	if tokens.POSTs == 0 {
		t.Errorf("token server saw no OAuth2 POST: the identity token handed over for %s was not used", byDigest)
	}
	t.Logf("daemon auth: %+v; token server: %+v", d.Status(t).Auth, tokens)
}

// soakImage has one layer of over 200 MB compressed (random data) under a
// small busybox layer.
func soakImage() imagegen.Options {
	return imagegen.Options{Name: "auth-soak", Seed: 42, Layers: []imagegen.LayerSpec{
		{Compression: imagegen.GzipParallel, Dir: "usr", Busybox: true, SmallFiles: 20},
		{Compression: imagegen.GzipParallel, Dir: "data", SmallFiles: 120, Random: []int64{208 << 20}, Compressible: []int64{8 << 20}},
	}}
}

// prefetchTook parses the duration of a layer status "done in 36.2s (...)".
func prefetchTook(status string) (time.Duration, bool) {
	rest, ok := strings.CutPrefix(status, "done in ")
	if !ok {
		return 0, false
	}
	d, err := time.ParseDuration(strings.Fields(rest)[0])
	return d, err == nil
}

// TestPrefetchSoakWithShortTokens: the registry issues 3-second tokens; the
// daemon prefetches a 220 MB layer in small batches at a capped bandwidth,
// so the prefetch spans more than ten token lifetimes, while a container
// keeps reading files of the layer. No request of the daemon arrives at the
// registry with an expired token, no read fails, every byte is exact, and the
// prefetched layer verifies.
func TestPrefetchSoakWithShortTokens(t *testing.T) {
	const lifetime = 3 * time.Second
	img := cachedImage(t, soakImage())
	var big imagegen.Layer
	for _, l := range img.Layers {
		if l.Size > big.Size {
			big = l
		}
	}
	if big.Size < 200e6 {
		t.Fatalf("the big layer has %d bytes compressed, the test wants >= 200 MB", big.Size)
	}
	// The cap makes the prefetch last about 35 s: over ten token lifetimes.
	const bandwidth = 6 << 20
	r := startPrivateRegistry(t, lifetime)
	r.Tokens.AddUser("alice", alicePassword, map[string][]string{"lazypull/soak": {"pull", "push"}})
	push(t, r.Reg, img, "lazypull/soak", "v1")
	ref := r.Ref("lazypull/soak", "v1")
	authFile := filepath.Join(t.TempDir(), "auth.json")
	writeAuthFile(t, authFile, r.Host, "alice", alicePassword)
	indexPrivate(t, r.Host, authFile, ref)

	d := testenv.StartDaemon(t, testenv.DaemonOptions{Config: map[string]any{
		"registry": map[string]any{"insecure": []string{r.Host}, "auth_file": authFile},
		"index":    map[string]any{"min_layer_size": "4MiB"},
		"prefetch": map[string]any{"enabled": true, "batch_size": "4MiB", "bandwidth": fmt.Sprint(bandwidth)},
		// The index comes from the registry: without this, the containers'
		// reads of files deep in the layer wait for the checkpoint proof,
		// which streams the layer at demand priority (outside the capped
		// background budget) and ends the soak in seconds. This test is
		// about tokens over a long background fetch, not proofs.
		"verification": map[string]any{"trust_indexes_for": []string{r.Host + "/"}},
	}})
	p := testenv.NewPodman(t, testenv.PodmanOptions{InsecureRegistries: []string{r.Host}, StorageOpts: []string{d.ALSOption()},
		Env: []string{"REGISTRY_AUTH_FILE=" + authFile}})
	lazyBefore, tokensBefore := r.Lazypull.Stats(), r.Tokens.Stats()
	start := time.Now()
	if _, err := p.Pull(ref); err != nil {
		t.Fatalf("lazy pull: %v\n%s", err, d.LogTail(30))
	}
	t.Logf("lazy pull took %s", time.Since(start).Round(time.Millisecond))

	want, err := img.ExpectedTree()
	if err != nil {
		t.Fatal(err)
	}
	files := regularFiles(want, "data", 120, false)
	var status control.LayerStatus
	runs := 0
	for deadline := start.Add(5 * time.Minute); ; {
		var found bool
		for _, l := range d.Status(t).Layers {
			if l.Digest == big.Digest.String() {
				status, found = l, true
			}
		}
		if !found {
			t.Fatalf("the daemon does not serve the big layer %s\n%s", big.Digest, d.LogTail(30))
		}
		if strings.HasPrefix(status.Prefetch, "done") && status.Verified {
			break
		}
		if status.Bad != "" || strings.HasPrefix(status.Prefetch, "failed") || strings.HasPrefix(status.Prefetch, "stopped") {
			t.Fatalf("prefetch of the big layer: %q, bad %q\n%s", status.Prefetch, status.Bad, d.LogTail(30))
		}
		if time.Now().After(deadline) {
			t.Fatalf("prefetch not done and verified after 5 minutes: %+v", status)
		}
		// Five files of the layer, different ones every time.
		var paths []string
		for i := 0; i < 5; i++ {
			paths = append(paths, files[(runs*5+i)%len(files)])
		}
		checkFilesInContainer(t, p, ref, want, paths)
		runs++
	}
	took, _ := prefetchTook(status.Prefetch)
	st := d.Status(t)
	lazy, podman, tokens := r.Lazypull.Stats(), r.Podman.Stats(), r.Tokens.Stats()
	t.Logf("big layer %s (%s, %d spans): prefetch %s, verified %v; %d container runs read %d files meanwhile",
		big.Digest.String()[:19], mib(big.Size), status.Spans, status.Prefetch, status.Verified, runs, runs*5)
	t.Logf("daemon requests at the registry: %d (%d authorized, %d refused: %d without token, %d expired, max %s late, %d invalid, %d insufficient scope)",
		lazy.Requests-lazyBefore.Requests, lazy.Authorized-lazyBefore.Authorized, lazy.Unauthorized-lazyBefore.Unauthorized,
		lazy.NoAuth-lazyBefore.NoAuth, lazy.ExpiredTokens-lazyBefore.ExpiredTokens, lazy.MaxExpiredBy, lazy.InvalidTokens-lazyBefore.InvalidTokens,
		lazy.Denied-lazyBefore.Denied)
	t.Logf("daemon auth status: %d token fetches, %d proactive refreshes, %d 401s seen, %d retries; token server issued %d tokens (%d GET, %d POST) during the soak",
		st.Auth.TokenFetches, st.Auth.ProactiveRefreshes, st.Auth.Unauthorized, st.Auth.Retries,
		tokens.Issued-tokensBefore.Issued, tokens.GETs-tokensBefore.GETs, tokens.POSTs-tokensBefore.POSTs)
	t.Logf("podman requests at the registry: %d (%d expired tokens); daemon reads: %d (%s), %d errors, p99 %s; registry: %d requests, %s",
		podman.Requests, podman.ExpiredTokens, st.Reads.Count, mib(st.Reads.Bytes), st.Reads.Errors, st.Reads.LatencyP99,
		st.Registry.Requests, mib(st.Registry.BytesFetched))

	if lazy.ExpiredTokens != 0 {
		t.Errorf("%d requests of the daemon arrived with an expired token (the stalest %s late), want 0", lazy.ExpiredTokens, lazy.MaxExpiredBy)
	}
	if lazy.InvalidTokens != 0 || lazy.Denied != 0 {
		t.Errorf("daemon requests refused: %d invalid tokens, %d insufficient scope, want 0", lazy.InvalidTokens, lazy.Denied)
	}
	if st.Reads.Errors != 0 {
		t.Errorf("daemon counted %d failed reads, want 0", st.Reads.Errors)
	}
	if took < 10*lifetime {
		t.Errorf("prefetch took %s, want >= %s (ten token lifetimes) for the test to mean something", took, 10*lifetime)
	}
	if status.SpansCached != status.Spans {
		t.Errorf("%d of %d spans cached after the prefetch", status.SpansCached, status.Spans)
	}
}
