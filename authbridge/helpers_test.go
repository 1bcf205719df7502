package authbridge

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containers/image/v5/docker/reference"
	"github.com/lazypull/lazypull/authbridge/authtest"
	"github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
)

// testHome is HOME for the whole test binary: containers/image reads HOME
// once per process, so tests share it and clean up what they put there.
var testHome string

// The leak check: every secret a test uses is registered; every error string
// a test produces (via noteErr) and every log line (from the Managers' logger
// and from containers/image's use of the standard logger) is recorded; after
// all tests ran, TestMain fails the binary if any recorded text contains a
// secret.
var leaks struct {
	mu      sync.Mutex
	secrets []string
	texts   []string
	logs    bytes.Buffer
}

// tokenMarker starts every token authtest.TokenServer issues
// (base64url of `{"sub"`).
const tokenMarker = "eyJzdWIi"

func TestMain(m *testing.M) {
	home, err := os.MkdirTemp("", "authbridge-home-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	testHome = home
	// The go command (building the credential helper) must keep its caches
	// when HOME changes.
	if os.Getenv("GOCACHE") == "" {
		if dir, err := os.UserCacheDir(); err == nil {
			os.Setenv("GOCACHE", filepath.Join(dir, "go-build"))
		}
	}
	if os.Getenv("GOPATH") == "" {
		if dir, err := os.UserHomeDir(); err == nil {
			os.Setenv("GOPATH", filepath.Join(dir, "go"))
		}
	}
	os.Setenv("HOME", home)
	for _, v := range []string{"XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "DOCKER_CONFIG", "REGISTRY_AUTH_FILE"} {
		os.Unsetenv(v)
	}
	std := logrus.StandardLogger()
	std.SetOutput(logWriter{})
	std.SetLevel(logrus.DebugLevel)

	code := m.Run()
	os.RemoveAll(home)
	if code == 0 {
		if found := findLeaks(); len(found) > 0 {
			fmt.Fprintln(os.Stderr, "FAIL: secrets leaked into errors or logs:")
			for _, f := range found {
				fmt.Fprintln(os.Stderr, "  ", f)
			}
			code = 1
		}
	}
	os.Exit(code)
}

// findLeaks returns the recorded texts that contain a secret.
func findLeaks() []string {
	leaks.mu.Lock()
	defer leaks.mu.Unlock()
	texts := append(append([]string(nil), leaks.texts...), strings.Split(leaks.logs.String(), "\n")...)
	var found []string
	for _, text := range texts {
		if strings.Contains(text, tokenMarker) {
			found = append(found, "token in: "+text)
		}
		for _, s := range leaks.secrets {
			if strings.Contains(text, s) {
				found = append(found, fmt.Sprintf("secret %q in: %s", s, text))
			}
		}
	}
	return found
}

// secret registers a password or identity token for user (and the Basic
// header encoding of the pair) with the leak check and returns it.
func secret(user, s string) string {
	leaks.mu.Lock()
	defer leaks.mu.Unlock()
	leaks.secrets = append(leaks.secrets, s, base64.StdEncoding.EncodeToString([]byte(user+":"+s)))
	return s
}

// noteErr records err's text for the leak check and returns err.
func noteErr(err error) error {
	if err != nil {
		leaks.mu.Lock()
		leaks.texts = append(leaks.texts, err.Error(), fmt.Sprintf("%+v", err))
		leaks.mu.Unlock()
	}
	return err
}

// noteText records any text (String() output) for the leak check.
func noteText(s string) {
	leaks.mu.Lock()
	leaks.texts = append(leaks.texts, s)
	leaks.mu.Unlock()
}

// testLogger is a Debug-level logger whose lines go to the leak check.
func testLogger() *logrus.Entry {
	l := logrus.New()
	l.SetOutput(logWriter{})
	l.SetLevel(logrus.DebugLevel)
	return logrus.NewEntry(l)
}

// logWriter appends to leaks.logs under leaks.mu.
type logWriter struct{}

func (logWriter) Write(p []byte) (int, error) {
	leaks.mu.Lock()
	defer leaks.mu.Unlock()
	return leaks.logs.Write(p)
}

// userEnv is an emulated user environment for credential lookups.
type userEnv struct {
	dir        string
	runtimeDir string // XDG_RUNTIME_DIR
	configHome string // XDG_CONFIG_HOME
	dockerCfg  string // DOCKER_CONFIG
	regConf    string // an empty registries.conf
	regConfDir string // an empty registries.conf.d
}

// newUserEnv sets XDG_RUNTIME_DIR, XDG_CONFIG_HOME and DOCKER_CONFIG to
// fresh directories, and removes what tests put under the shared HOME when
// the test ends.
func newUserEnv(t *testing.T) *userEnv {
	t.Helper()
	dir := t.TempDir()
	e := &userEnv{
		dir:        dir,
		runtimeDir: filepath.Join(dir, "run"),
		configHome: filepath.Join(dir, "config"),
		dockerCfg:  filepath.Join(dir, "docker"),
		regConf:    filepath.Join(dir, "registries.conf"),
		regConfDir: filepath.Join(dir, "registries.conf.d"),
	}
	for _, d := range []string{e.runtimeDir, e.configHome, e.dockerCfg, e.regConfDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, e.regConf, "")
	t.Setenv("XDG_RUNTIME_DIR", e.runtimeDir)
	t.Setenv("XDG_CONFIG_HOME", e.configHome)
	t.Setenv("DOCKER_CONFIG", e.dockerCfg)
	t.Cleanup(func() {
		os.RemoveAll(filepath.Join(testHome, ".docker"))
		os.RemoveAll(filepath.Join(testHome, ".dockercfg"))
		os.RemoveAll(filepath.Join(testHome, ".config"))
	})
	return e
}

// options returns Options isolated to e (no system registries.conf).
func (e *userEnv) options() Options {
	return Options{RegistriesConf: e.regConf, RegistriesConfDir: e.regConfDir, Logger: testLogger()}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// authEntry is one "auths" entry of an auth file.
type authEntry struct {
	user, password, identityToken string
}

// authJSON builds an auth file: auths keyed as given, plus credHelpers.
func authJSON(auths map[string]authEntry, helpers map[string]string) string {
	f := map[string]any{}
	a := map[string]any{}
	for k, e := range auths {
		v := map[string]string{}
		// c/image ignores entries without "auth"; docker writes "user:" next
		// to an identity token.
		if e.user != "" || e.password != "" || e.identityToken != "" {
			v["auth"] = base64.StdEncoding.EncodeToString([]byte(e.user + ":" + e.password))
		}
		if e.identityToken != "" {
			v["identitytoken"] = e.identityToken
		}
		a[k] = v
	}
	f["auths"] = a
	if helpers != nil {
		f["credHelpers"] = helpers
	}
	raw, _ := json.Marshal(f)
	return string(raw)
}

func mustRef(t *testing.T, s string) reference.Named {
	t.Helper()
	r, err := reference.ParseNormalizedNamed(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func newManager(t *testing.T, o Options) *Manager {
	t.Helper()
	if o.Logger == nil {
		o.Logger = testLogger()
	}
	m, err := NewManager(o)
	if err != nil {
		t.Fatalf("NewManager: %v", noteErr(err))
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		noteText(m.Stats().String())
	})
	return m
}

// registry is an in-process registry with token auth for transport tests.
type registry struct {
	clock *authtest.Clock
	ts    *authtest.TokenServer
	proxy *authtest.AuthProxy
	blobs *authtest.BlobRegistry
	data  []byte
	dgst  digest.Digest
}

// registryConfig tunes newRegistry.
type registryConfig struct {
	lifetime time.Duration
	fake     bool // use a fake clock shared by token server and proxy
	expiry   authtest.ExpiryStyle
	redirect bool
	basic    map[string]string // BasicMode users
}

// newRegistry starts TokenServer + AuthProxy + BlobRegistry with repository
// "team/app" holding one blob (see blobURL).
func newRegistry(t *testing.T, c registryConfig) *registry {
	t.Helper()
	r := &registry{clock: authtest.NewClock(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)), blobs: authtest.NewBlobRegistry()}
	now := time.Now
	if c.fake {
		now = r.clock.Now
	}
	r.ts = authtest.NewTokenServer(t, authtest.TokenServerConfig{Lifetime: c.lifetime, Now: now})
	r.data = bytes.Repeat([]byte("lazypull-"), 4096)
	r.dgst = r.blobs.Put("team/app", r.data)
	r.blobs.Put("team/other", r.data)
	mode := authtest.BearerMode
	if c.basic != nil {
		mode = authtest.BasicMode
	}
	r.proxy = authtest.NewAuthProxy(t, authtest.ProxyConfig{
		Upstream: r.blobs, Mode: mode, TokenServer: r.ts, Users: c.basic, Expiry: c.expiry, RedirectBlobs: c.redirect, Now: now,
	})
	return r
}

// ref returns the image reference of repository repo on this registry.
func (r *registry) ref(t *testing.T, repo string) reference.Named {
	return mustRef(t, r.proxy.Host()+"/"+repo+":latest")
}

// blobURL is the URL of the test blob in repo.
func (r *registry) blobURL(repo string) string {
	return r.proxy.URL() + "/v2/" + repo + "/blobs/" + r.dgst.String()
}

// get does a GET (with an optional Range) through rt and returns status and
// body, or the error.
func get(ctx context.Context, rt http.RoundTripper, url, rangeHdr string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, err
	}
	if rangeHdr != "" {
		req.Header.Set("Range", rangeHdr)
	}
	resp, err := (&http.Client{Transport: rt}).Do(req)
	if err != nil {
		return 0, nil, noteErr(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, noteErr(err)
}
