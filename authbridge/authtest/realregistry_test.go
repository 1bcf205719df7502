package authtest

import (
	"bytes"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

const dockerRegistryBin = "/usr/bin/docker-registry"

// startDockerRegistry runs the distribution registry on a loopback port and
// returns its base URL.
func startDockerRegistry(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat(dockerRegistryBin); err != nil {
		t.Skipf("needs %s (Debian package docker-registry): %v", dockerRegistryBin, err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	dir := t.TempDir()
	cfg := fmt.Sprintf("version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s\n", filepath.Join(dir, "data"), addr)
	cfgPath := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(dockerRegistryBin, "serve", cfgPath)
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	base := "http://" + addr
	for deadline := time.Now().Add(10 * time.Second); ; {
		resp, err := http.Get(base + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return base
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("docker-registry did not start: %v\n%s", err, logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// pushBlob uploads data to the registry at base directly (no proxy).
func pushBlob(t *testing.T, base, repo string, data []byte) digest.Digest {
	t.Helper()
	d := digest.FromBytes(data)
	resp, err := http.Post(base+"/v2/"+repo+"/blobs/uploads/", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc, err := resp.Location()
	if resp.StatusCode != http.StatusAccepted || err != nil {
		t.Fatalf("starting upload: %d %v", resp.StatusCode, err)
	}
	q := loc.Query()
	q.Set("digest", d.String())
	loc.RawQuery = q.Encode()
	req, _ := http.NewRequest(http.MethodPut, loc.String(), bytes.NewReader(data))
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("finishing upload: status %d", resp.StatusCode)
	}
	return d
}

// TestAuthProxyDockerRegistry puts the proxy in front of a real
// distribution registry: ranges and multipart answers must come through
// unchanged, with and without the storage redirect.
func TestAuthProxyDockerRegistry(t *testing.T) {
	base := startDockerRegistry(t)
	data := bytes.Repeat([]byte("abcdefghij"), 10000)
	d := pushBlob(t, base, "lazy/app", data)
	upstream, _ := url.Parse(base)

	ts := NewTokenServer(t, TokenServerConfig{})
	ts.AddUser("u", "pw", map[string][]string{"lazy/app": {"pull"}})
	tok, _ := fetchToken(t, ts, "u", "pw", "repository:lazy/app:pull")

	// Go's client forwards Authorization on redirects to the same IP with
	// another port; a careful client drops it for any other host:port.
	client := &http.Client{CheckRedirect: func(req *http.Request, via []*http.Request) error {
		if req.URL.Host != via[0].URL.Host {
			req.Header.Del("Authorization")
		}
		return nil
	}}
	for _, redirect := range []bool{false, true} {
		p := NewAuthProxy(t, ProxyConfig{UpstreamURL: upstream.String(), TokenServer: ts, RedirectBlobs: redirect})
		blobURL := p.URL() + "/v2/lazy/app/blobs/" + d.String()

		resp := get(t, client, blobURL, tok["token"].(string), "bytes=5-14")
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusPartialContent || string(body) != "fghijabcde" {
			t.Errorf("redirect=%v: single range: %d %q, want 206 %q", redirect, resp.StatusCode, body, "fghijabcde")
		}
		resp = get(t, client, blobURL, tok["token"].(string), "bytes=0-0,99999-99999")
		mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
		if resp.StatusCode != http.StatusPartialContent || mt != "multipart/byteranges" {
			t.Errorf("redirect=%v: multi range: %d %s, want 206 multipart/byteranges", redirect, resp.StatusCode, mt)
		}
		resp = get(t, client, blobURL, "", "bytes=0-1")
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("redirect=%v: without token: status %d, want 401", redirect, resp.StatusCode)
		}
		st := p.Stats()
		if st.Authorized != 2 || st.StorageAuthViolations != 0 {
			t.Errorf("redirect=%v: Stats() = %+v, want Authorized 2 and no violations", redirect, st)
		}
		if redirect && st.StorageRequests != 2 {
			t.Errorf("redirect=%v: StorageRequests = %d, want 2", redirect, st.StorageRequests)
		}
	}
}
