package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/lazypull/lazypull/tests/imagegen"
	"github.com/lazypull/lazypull/tests/testenv"
	"github.com/lazypull/lazypull/tests/testenv/fstree"
)

// The tests in this file reach registries the ways podman users configure
// (registries.conf mirrors and rewrites, certs.d, proxies), with stock
// podman and the lazypull daemon reading the same files. They use the
// two-big-layer image of the credential tests (privateImage).

// writeRegistriesConf writes a registries.conf holding entries (TOML) for
// podman and the daemon, and returns its path.
func writeRegistriesConf(t *testing.T, entries string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "registries.conf")
	body := "unqualified-search-registries = []\nshort-name-mode = \"disabled\"\n" + entries
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// mirrorDaemonConfig is a daemon configuration reading registriesConf.
func mirrorDaemonConfig(registriesConf string, registry map[string]any) map[string]any {
	reg := map[string]any{"registries_conf": registriesConf}
	for k, v := range registry {
		reg[k] = v
	}
	return map[string]any{
		"registry": reg,
		"index":    map[string]any{"min_layer_size": "4MiB"},
		"prefetch": map[string]any{"enabled": false},
	}
}

// podmanReading returns a podman harness on d's store whose registries.conf
// is conf (the harness's own is replaced through the environment).
func podmanReading(t *testing.T, d *testenv.Daemon, conf string, env ...string) *testenv.Podman {
	t.Helper()
	return testenv.NewPodman(t, testenv.PodmanOptions{StorageOpts: []string{d.ALSOption()},
		Env: append([]string{"CONTAINERS_REGISTRIES_CONF=" + conf}, env...)})
}

// runLazypullFails runs the lazypull binary like runLazypull and returns
// its output, failing the test when the command succeeds.
func runLazypullFails(t *testing.T, cfg map[string]any, args ...string) string {
	t.Helper()
	dir := t.TempDir()
	if _, ok := cfg["root_dir"]; !ok {
		cfg["root_dir"] = filepath.Join(dir, "root")
	}
	var buf bytes.Buffer
	if err := toml.NewEncoder(&buf).Encode(cfg); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(path, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(testenv.LazypullBinary(t), append([]string{"--config", path}, args...)...).CombinedOutput()
	if err == nil {
		t.Fatalf("lazypull %s succeeded, want a failure:\n%s", strings.Join(args, " "), out)
	}
	return string(out)
}

// workload returns a few files of every layer of the private image.
func workload(want fstree.Tree) []string {
	var paths []string
	for _, dir := range []string{"usr/lib/base", "opt/app", "srv/top"} {
		paths = append(paths, regularFiles(want, dir, 3, false)...)
	}
	return append(paths, regularFiles(want, "opt/app", 1, true)...)
}

// pullLazily pulls ref with p, checks that the indexed layers are served by
// d and that a container reads exact bytes.
func pullLazily(t *testing.T, p *testenv.Podman, d *testenv.Daemon, img *imagegen.Image, ref string, extra ...string) {
	t.Helper()
	if _, err := p.Pull(ref, extra...); err != nil {
		t.Fatalf("lazy pull of %s: %v\n%s", ref, err, d.LogTail(30))
	}
	indexed := indexedLayers(img, authMinLayer)
	if links := alsDiffLinks(t, p.Root, d.MountPoint); len(links) != len(indexed) {
		t.Errorf("%d layer diffs point into the store, want %d (the indexed layers): %v\n%s", len(links), len(indexed), links, d.LogTail(30))
	}
	want, err := img.ExpectedTree()
	if err != nil {
		t.Fatal(err)
	}
	checkFilesInContainer(t, p, ref, want, workload(want))
}

// checkEndpoints asserts that the daemon says every layer's reads came from
// endpoint (a repository at a mirror or the origin).
func checkEndpoints(t *testing.T, d *testenv.Daemon, endpoint string) {
	t.Helper()
	st := d.Status(t)
	if len(st.Layers) == 0 {
		t.Fatal("the daemon serves no layer")
	}
	for _, l := range st.Layers {
		if l.Endpoint != endpoint {
			t.Errorf("layer %s was served by %q, want %q", l.Digest, l.Endpoint, endpoint)
		}
	}
	out, err := d.Run("status")
	if err != nil || !strings.Contains(out, endpoint) {
		t.Errorf("lazypull status does not name %s: %v\n%s", endpoint, err, out)
	}
}

// logHas reports whether the daemon's log has a line containing all of
// the strings.
func logHas(d *testenv.Daemon, parts ...string) bool {
	b, _ := os.ReadFile(d.LogPath)
	for _, line := range strings.Split(string(b), "\n") {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			return true
		}
	}
	return false
}

// originWithIndex starts an origin registry behind a CountingProxy, pushes
// the private image as repo:v1 and its SOCI index (lazypull index --push
// from another machine, straight to the registry), and returns the
// counting proxy, whose host is the image's registry.
func originWithIndex(t *testing.T, img *imagegen.Image, repo string) (*testenv.Registry, *testenv.CountingProxy) {
	t.Helper()
	origin := testenv.StartRegistry(t, testenv.RegistryOptions{})
	count := testenv.StartCountingProxy(t, origin.URL)
	direct := push(t, origin, img, repo, "v1")
	out := runLazypull(t, map[string]any{
		"registry": map[string]any{"insecure": []string{origin.Host}},
		"index":    map[string]any{"min_layer_size": "4MiB"},
	}, "index", "--push", direct)
	t.Logf("lazypull index: %s", strings.TrimSpace(out))
	return origin, count
}

// TestPullThroughCacheMirror: distribution in proxy mode (a pull-through
// cache) is the mirror of the image's registry in registries.conf. A lazy
// pull through it works although the mirror has never seen the image (it
// answers the first range request of each blob with the whole blob, streamed
// from upstream, and stores it), reads are exact, the origin never sees a
// range request, and a second machine reads the layers from the warm
// mirror: the origin sees no request for them at all.
func TestPullThroughCacheMirror(t *testing.T) {
	img := cachedImage(t, privateImage())
	indexed := indexedLayers(img, authMinLayer)
	_, origin := originWithIndex(t, img, "lazypull/mirrored")
	ref := origin.Host + "/lazypull/mirrored:v1"
	mirror := testenv.StartRegistry(t, testenv.RegistryOptions{ProxyRemoteURL: origin.URL})
	mirrorCount := testenv.StartCountingProxy(t, mirror.URL)
	conf := writeRegistriesConf(t, fmt.Sprintf(`
[[registry]]
location = %q
insecure = true
[[registry.mirror]]
location = %q
insecure = true
`, origin.Host, mirrorCount.Host))
	cfg := mirrorDaemonConfig(conf, nil)

	// Machine 1, cold mirror.
	d := testenv.StartDaemon(t, testenv.DaemonOptions{Config: cfg})
	p := podmanReading(t, d, conf)
	origin.Reset()
	pullLazily(t, p, d, img, ref)
	want, err := img.ExpectedTree()
	if err != nil {
		t.Fatal(err)
	}
	compareTrees(t, p, ref, want, "rootfs pulled lazily through a cold pull-through mirror")
	o, m := origin.Stats(), mirrorCount.Stats()
	t.Logf("machine 1: origin %+v, mirror %+v", o.ByKind, m.ByKind)
	if n := o.ByKind[testenv.KindRange].Requests; n != 0 {
		t.Errorf("the origin saw %d range requests, want 0 (all through the mirror)", n)
	}
	if n := m.ByKind[testenv.KindRange].Requests; n == 0 {
		t.Error("the mirror saw no range request")
	}
	checkEndpoints(t, d, mirrorCount.Host+"/lazypull/mirrored")

	// The mirror stores blobs in the background; machine 2 comes later.
	for _, l := range indexed {
		u := mirror.URL + "/v2/lazypull/mirrored/blobs/" + l.Digest.String()
		waitFor(t, time.Minute, "the mirror to store "+l.Digest.String(), func() bool {
			req, _ := http.NewRequest(http.MethodGet, u, nil)
			req.Header.Set("Range", "bytes=0-0")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == http.StatusPartialContent
		})
	}

	// Machine 2, warm mirror.
	d2 := testenv.StartDaemon(t, testenv.DaemonOptions{Config: cfg})
	p2 := podmanReading(t, d2, conf)
	origin.Reset()
	mirrorCount.Reset()
	if _, err := p2.Pull(ref); err != nil {
		t.Fatalf("machine 2: lazy pull: %v\n%s", err, d2.LogTail(30))
	}
	pulled, total := mirrorCount.Stats().BlobBytes(), img.CompressedSize()
	t.Logf("machine 2: the lazy pull fetched %s of blobs from the mirror for a %s image", mib(pulled), mib(total))
	if pulled*100 >= total*5 {
		t.Errorf("machine 2: the lazy pull fetched %d bytes from the mirror, want < 5 %% of %d", pulled, total)
	}
	checkFilesInContainer(t, p2, ref, want, workload(want))
	o2 := origin.Stats()
	for _, l := range indexed {
		if c := o2.ByDigest[l.Digest.String()]; c.Requests != 0 {
			t.Errorf("machine 2: the origin saw %d requests for layer %s, want 0 (the mirror has it)", c.Requests, l.Digest)
		}
	}
	if n := mirrorCount.Stats().ByKind[testenv.KindRange].Requests; n == 0 {
		t.Error("machine 2: the mirror saw no range request")
	}
	checkEndpoints(t, d2, mirrorCount.Host+"/lazypull/mirrored")
}

// closedPort returns a loopback address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// TestMirrorDownFallsBackToOrigin: a mirror that does not answer is left
// out, with a log line, and the origin serves the lazy pull, exactly.
func TestMirrorDownFallsBackToOrigin(t *testing.T) {
	img := cachedImage(t, privateImage())
	_, origin := originWithIndex(t, img, "lazypull/nomirror")
	ref := origin.Host + "/lazypull/nomirror:v1"
	dead := closedPort(t)
	conf := writeRegistriesConf(t, fmt.Sprintf(`
[[registry]]
location = %q
insecure = true
[[registry.mirror]]
location = %q
insecure = true
`, origin.Host, dead))
	d := testenv.StartDaemon(t, testenv.DaemonOptions{Config: mirrorDaemonConfig(conf, nil)})
	p := podmanReading(t, d, conf)
	origin.Reset()
	pullLazily(t, p, d, img, ref)
	if n := origin.Stats().ByKind[testenv.KindRange].Requests; n == 0 {
		t.Error("the origin saw no range request")
	}
	checkEndpoints(t, d, origin.Host+"/lazypull/nomirror")
	if !logHas(d, "Registry mirror failed", dead) {
		t.Errorf("the daemon's log has no line saying mirror %s failed:\n%s", dead, d.LogTail(30))
	}
}

// TestMirrorIgnoringRangeSkipped: a mirror that answers range requests with
// the whole blob (a fake in front of a real registry holding the image: a
// real registry ignores Range only while it warms up) is skipped for each
// blob, with a log line; the origin serves the ranges, exactly. With
// registry.mirror_warmup = "0s" the mirror gets no grace.
func TestMirrorIgnoringRangeSkipped(t *testing.T) {
	img := cachedImage(t, privateImage())
	_, origin := originWithIndex(t, img, "lazypull/ranges")
	ref := origin.Host + "/lazypull/ranges:v1"
	mirrorReg := testenv.StartRegistry(t, testenv.RegistryOptions{})
	push(t, mirrorReg, img, "lazypull/ranges", "v1")
	target, _ := url.Parse(mirrorReg.URL)
	rp := httputil.NewSingleHostReverseProxy(target)
	stripper := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Header.Del("Range")
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(stripper.Close)
	mirror := testenv.StartCountingProxy(t, stripper.URL) // counts the Range headers sent
	conf := writeRegistriesConf(t, fmt.Sprintf(`
[[registry]]
location = %q
insecure = true
[[registry.mirror]]
location = %q
insecure = true
`, origin.Host, mirror.Host))
	d := testenv.StartDaemon(t, testenv.DaemonOptions{Config: mirrorDaemonConfig(conf, map[string]any{"mirror_warmup": "0s"})})
	p := podmanReading(t, d, conf)
	origin.Reset()
	pullLazily(t, p, d, img, ref)
	want, err := img.ExpectedTree()
	if err != nil {
		t.Fatal(err)
	}
	compareTrees(t, p, ref, want, "rootfs pulled lazily past a mirror that ignores ranges")
	if n := mirror.Stats().ByKind[testenv.KindRange].Requests; n == 0 {
		t.Error("the mirror saw no range request")
	}
	if n := origin.Stats().ByKind[testenv.KindRange].Requests; n == 0 {
		t.Error("the origin saw no range request")
	}
	checkEndpoints(t, d, origin.Host+"/lazypull/ranges")
	if !logHas(d, "does not answer range requests", mirror.Host) {
		t.Errorf("the daemon's log has no line saying mirror %s does not answer range requests:\n%s", mirror.Host, d.LogTail(30))
	}
}

// TestLocationRewrite: a registries.conf prefix whose location is another
// registry and repository: podman and the daemon both pull
// lazypull.test/apps:v1 from there.
func TestLocationRewrite(t *testing.T) {
	img := cachedImage(t, privateImage())
	_, origin := originWithIndex(t, img, "lazypull/rewritten")
	conf := writeRegistriesConf(t, fmt.Sprintf(`
[[registry]]
prefix = "lazypull.test/apps"
location = "%s/lazypull/rewritten"
insecure = true
`, origin.Host))
	d := testenv.StartDaemon(t, testenv.DaemonOptions{Config: mirrorDaemonConfig(conf, nil)})
	p := podmanReading(t, d, conf)
	const ref = "lazypull.test/apps:v1"
	origin.Reset()
	pullLazily(t, p, d, img, ref)
	if n := origin.Stats().ByKind[testenv.KindRange].Requests; n == 0 {
		t.Error("the rewritten location saw no range request")
	}
	checkEndpoints(t, d, origin.Host+"/lazypull/rewritten")
	if refs := layerRefs(d.Status(t)); !refs[ref] {
		t.Errorf("the daemon's layers are not listed under %s: %v", ref, refs)
	}
}

// TestBlockedRegistry: a registry blocked in registries.conf is refused by
// `lazypull index` and by the daemon with podman's words.
func TestBlockedRegistry(t *testing.T) {
	img := cachedImage(t, privateImage())
	reg := testenv.StartRegistry(t, testenv.RegistryOptions{})
	ref := push(t, reg, img, "lazypull/blocked", "v1")
	conf := writeRegistriesConf(t, fmt.Sprintf("[[registry]]\nlocation = %q\ninsecure = true\nblocked = true\n", reg.Host))
	wantMsg := fmt.Sprintf("registry %s is blocked in %s", reg.Host, conf)
	out := runLazypullFails(t, map[string]any{"registry": map[string]any{"registries_conf": conf}}, "index", ref)
	t.Logf("lazypull index of a blocked image: %s", strings.TrimSpace(out))
	if !strings.Contains(out, wantMsg) {
		t.Errorf("lazypull index of a blocked image said:\n%s\nwant %q", out, wantMsg)
	}
	d := testenv.StartDaemon(t, testenv.DaemonOptions{Config: mirrorDaemonConfig(conf, nil)})
	p := podmanReading(t, d, conf)
	_, err := p.Pull(ref)
	t.Logf("podman pull of a blocked image: %v", err)
	if err == nil || !strings.Contains(err.Error(), "is blocked in") {
		t.Errorf("podman pull of a blocked image: %v, want podman's \"is blocked in\"", err)
	}
	for _, l := range indexedLayers(img, authMinLayer) {
		if alsServes(t, d, ref, l.Digest) {
			t.Errorf("the store serves layer %s of a blocked image", l.Digest)
		}
	}
	if reason := notServedReason(d, ref); !strings.Contains(reason, wantMsg) {
		t.Errorf("the daemon's reason for not serving %s = %q, want %q", ref, reason, wantMsg)
	}
}

// TestPrivateCARegistry: a TLS registry whose certificate comes from a
// private CA known only to a certs.d directory (registry.certs_dir for
// lazypull, --cert-dir for podman): without it, a clear TLS error naming
// the certs.d directories; with it, `lazypull index --push` and a lazy pull
// work. The second case wants a client certificate as well (*.cert/*.key).
func TestPrivateCARegistry(t *testing.T) {
	img := cachedImage(t, privateImage())
	ca := testenv.NewTestCA(t, "lazypull e2e private CA")
	for _, tc := range []struct {
		name        string
		clientCerts bool
	}{{"CA", false}, {"client certificate", true}} {
		t.Run(tc.name, func(t *testing.T) {
			reg := testenv.StartRegistry(t, testenv.RegistryOptions{TLS: ca, ClientCerts: tc.clientCerts})
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			if _, err := (&testenv.Pusher{Client: reg.HTTPClient}).Push(ctx, reg.URL, "lazypull/tls", "v1", img.Dir); err != nil {
				t.Fatal(err)
			}
			ref := reg.Host + "/lazypull/tls:v1"
			index := map[string]any{"min_layer_size": "4MiB"}

			// Without the CA: podman's certs.d directories have nothing for it.
			out := runLazypullFails(t, map[string]any{"index": index}, "index", ref)
			t.Logf("lazypull index without the CA: %s", strings.TrimSpace(out))
			if !strings.Contains(out, "certificate signed by unknown authority") || !strings.Contains(out, "/etc/containers/certs.d") ||
				!strings.Contains(out, "containers-certs.d(5)") {
				t.Errorf("lazypull index without the CA said:\n%s\nwant an unknown-authority error naming /etc/containers/certs.d", out)
			}
			certs := t.TempDir()
			if tc.clientCerts {
				if _, err := ca.WriteCertsD(certs, reg.Host, testenv.CertsDirOptions{CA: true}); err != nil {
					t.Fatal(err)
				}
				out := runLazypullFails(t, map[string]any{"index": index, "registry": map[string]any{"certs_dir": certs}}, "index", ref)
				t.Logf("lazypull index without a client certificate: %s", strings.TrimSpace(out))
				if !strings.Contains(out, "client certificate") || !strings.Contains(out, filepath.Join(certs, reg.Host)) {
					t.Errorf("lazypull index without a client certificate said:\n%s\nwant an error asking for one in %s", out, filepath.Join(certs, reg.Host))
				}
			}
			hostDir, err := ca.WriteCertsD(certs, reg.Host, testenv.CertsDirOptions{CA: true, Client: tc.clientCerts})
			if err != nil {
				t.Fatal(err)
			}
			registry := map[string]any{"certs_dir": certs}
			out = runLazypull(t, map[string]any{"index": index, "registry": registry}, "index", "--push", ref)
			t.Logf("lazypull index: %s", strings.TrimSpace(out))

			d := testenv.StartDaemon(t, testenv.DaemonOptions{Config: map[string]any{
				"registry": registry, "index": index, "prefetch": map[string]any{"enabled": false},
			}})
			p := testenv.NewPodman(t, testenv.PodmanOptions{StorageOpts: []string{d.ALSOption()}})
			pullLazily(t, p, d, img, ref, "--cert-dir", hostDir)
			checkEndpoints(t, d, reg.Host+"/lazypull/tls")
		})
	}
}

// TestProxyFromEnvironment: with HTTPS_PROXY in its environment the daemon
// reaches a TLS registry with Basic authentication through a CONNECT tunnel
// of the proxy, which never sees the credentials; with NO_PROXY naming the
// registry it goes direct. The registry is named by this machine's host
// name: Go (and podman) never proxy localhost or loopback IP addresses.
func TestProxyFromEnvironment(t *testing.T) {
	img := cachedImage(t, privateImage())
	host := testenv.LoopbackHostname(t)
	ca := testenv.NewTestCA(t, "lazypull e2e proxy CA")
	const user, password = "proxied", "proxied-Pw-7d1e0c55b2"
	reg := testenv.StartRegistry(t, testenv.RegistryOptions{TLS: ca, TLSHosts: []string{host}, Users: map[string]string{user: password}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := (&testenv.Pusher{Client: reg.HTTPClient}).Push(ctx, reg.URL, "lazypull/proxied", "v1", img.Dir); err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(reg.Host)
	named := net.JoinHostPort(host, port)
	ref := named + "/lazypull/proxied:v1"
	certs := t.TempDir()
	hostDir, err := ca.WriteCertsD(certs, named, testenv.CertsDirOptions{CA: true})
	if err != nil {
		t.Fatal(err)
	}
	authFile := filepath.Join(t.TempDir(), "auth.json")
	writeAuthFile(t, authFile, named, user, password)
	registry := map[string]any{"certs_dir": certs, "auth_file": authFile}
	index := map[string]any{"min_layer_size": "4MiB"}
	runLazypull(t, map[string]any{"registry": registry, "index": index}, "index", "--push", ref)

	proxy := testenv.StartConnectProxy(t)
	cfg := map[string]any{"registry": registry, "index": index, "prefetch": map[string]any{"enabled": false}}
	proxied := []string{"HTTPS_PROXY=" + proxy.URL, "https_proxy=" + proxy.URL, "HTTP_PROXY=", "http_proxy="}
	d := testenv.StartDaemon(t, testenv.DaemonOptions{Config: cfg, Env: append(proxied, "NO_PROXY=", "no_proxy=")})
	p := testenv.NewPodman(t, testenv.PodmanOptions{StorageOpts: []string{d.ALSOption()}})
	pullLazily(t, p, d, img, ref, "--cert-dir", hostDir, "--authfile", authFile)
	tunnels := proxy.Tunnels()[named]
	t.Logf("CONNECT tunnels to %s: %d", named, tunnels)
	if tunnels == 0 {
		t.Errorf("the daemon opened no tunnel to %s through the proxy (tunnels: %v)", named, proxy.Tunnels())
	}
	basic := base64.StdEncoding.EncodeToString([]byte(user + ":" + password))
	if proxy.Saw(password) || proxy.Saw(basic) {
		t.Error("the proxy saw the registry credentials in clear")
	}
	checkEndpoints(t, d, named+"/lazypull/proxied")

	// NO_PROXY names the registry: direct.
	d2 := testenv.StartDaemon(t, testenv.DaemonOptions{Config: cfg, Env: append(proxied, "NO_PROXY="+host, "no_proxy="+host)})
	p2 := testenv.NewPodman(t, testenv.PodmanOptions{StorageOpts: []string{d2.ALSOption()}})
	pullLazily(t, p2, d2, img, ref, "--cert-dir", hostDir, "--authfile", authFile)
	if n := proxy.Tunnels()[named]; n != tunnels {
		t.Errorf("with NO_PROXY=%s the proxy got %d more tunnels to the registry, want none", host, n-tunnels)
	}
	checkEndpoints(t, d2, named+"/lazypull/proxied")
}
