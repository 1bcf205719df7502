package authbridge

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lazypull/lazypull/authbridge/authtest"
)

func TestParseAuthHelperInput(t *testing.T) {
	pw := secret("alice", "s3cr3t-helper-input")
	idt := secret("bob", "s3cr3t-helper-identity")
	tests := []struct {
		name    string
		in      string
		want    map[string]Credential
		wantErr bool
	}{
		{
			name: "containers/image format",
			in:   `{"127.0.0.1:5000/app/big:gzip":{"username":"alice","password":"` + pw + `"}}`,
			want: map[string]Credential{"127.0.0.1:5000/app/big:gzip": {Username: "alice", Password: pw}},
		},
		{
			name: "identity token, both spellings, normalized keys",
			in:   `{"alpine:3": {"identityToken": "` + idt + `"}, "quay.io/x/y@sha256:` + strings.Repeat("b", 64) + `": {"username": "bob", "identitytoken": "` + idt + `"}}`,
			want: map[string]Credential{
				"docker.io/library/alpine:3":                    {IdentityToken: idt},
				"quay.io/x/y@sha256:" + strings.Repeat("b", 64): {Username: "bob", IdentityToken: idt},
			},
		},
		{name: "anonymous pull", in: `{"reg.example/a:1": {}}`, want: map[string]Credential{"reg.example/a:1": {}}},
		{name: "empty object", in: `{}`, want: map[string]Credential{}},
		{name: "empty input", in: "", wantErr: true},
		{name: "whitespace", in: " \n", wantErr: true},
		{name: "truncated", in: `{"reg.example/a:1": {"password": "` + pw, wantErr: true},
		{name: "syntax error", in: `{"reg.example/a:1": {"password": ` + pw + `}}`, wantErr: true},
		{name: "array", in: `[{"username": "alice", "password": "` + pw + `"}]`, wantErr: true},
		{name: "null", in: `null`, wantErr: true},
		{name: "null entry", in: `{"reg.example/a:1": null}`, wantErr: true},
		{name: "wrong type", in: `{"reg.example/a:1": {"password": 42}}`, wantErr: true},
		{name: "bad reference", in: `{"Not A Ref!": {"password": "` + pw + `"}}`, wantErr: true},
		{name: "duplicate after normalization", in: `{"alpine": {}, "docker.io/library/alpine": {}}`, wantErr: true},
		{name: "trailing data", in: `{} {"reg.example/a:1": {"password": "` + pw + `"}}`, wantErr: true},
		{name: "too large", in: `{"a/b:1": {"password": "` + strings.Repeat("x", maxHelperInput) + `"}}`, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseAuthHelperInput(strings.NewReader(tc.in))
			noteErr(err)
			if tc.wantErr {
				if !errors.Is(err, ErrInvalidHelperInput) || got != nil {
					t.Fatalf("ParseAuthHelperInput = %v, %v; want nil, ErrInvalidHelperInput", got, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseAuthHelperInput: %v", err)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("ParseAuthHelperInput = %v, want %v", got, tc.want)
			}
			for k, w := range tc.want {
				if got[k] != w {
					t.Errorf("entry %q = %v, want %v", k, got[k], w)
				}
			}
		})
	}
}

func TestCredentialStringsRedacted(t *testing.T) {
	c := Credential{Username: "carol", Password: secret("carol", "s3cr3t-carol"), IdentityToken: secret("carol", "s3cr3t-carol-id")}
	raw, err := c.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{c.String(), c.GoString(), fmt.Sprintf("%v %+v %#v %s %q", c, c, c, c, c), string(raw)} {
		noteText(s)
		if strings.Contains(s, "s3cr3t") || !strings.Contains(s, "carol") {
			t.Errorf("formatted credential %q: want the user name and no secret", s)
		}
	}
}

func TestHandoverStorePersistence(t *testing.T) {
	clock := authtest.NewClock(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
	path := filepath.Join(t.TempDir(), "state", "handover.json")
	opts := HandoverOptions{Path: path, Persist: true, TTL: time.Hour, Now: clock.Now}
	s, err := OpenHandoverStore(opts)
	if err != nil {
		t.Fatal(err)
	}
	alice := Credential{Username: "alice", Password: secret("alice", "s3cr3t-handover-a")}
	if err := s.Put("reg.example/app:1", alice); err != nil {
		t.Fatalf("Put: %v", noteErr(err))
	}
	clock.Advance(30 * time.Minute)
	if err := s.Put("alpine", Credential{IdentityToken: secret("x", "s3cr3t-handover-id")}); err != nil {
		t.Fatalf("Put: %v", noteErr(err))
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("file mode = %v, want 0600", fi.Mode().Perm())
	}
	// A crash between the temporary file and the rename leaves this behind.
	stale := filepath.Join(filepath.Dir(path), ".handover.json.tmp-123")
	writeFile(t, stale, "garbage")

	s2, err := OpenHandoverStore(opts)
	if err != nil {
		t.Fatalf("reopen: %v", noteErr(err))
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("stale temporary file still there: %v", err)
	}
	tests := []struct {
		ref    string
		want   Credential
		wantOK bool
	}{
		{"reg.example/app:1", alice, true},
		{"reg.example/app:2", Credential{}, false}, // exact reference only
		{"reg.example/app", Credential{}, false},   // not even the repository
		{"docker.io/library/alpine:latest", Credential{}, false},
		{"docker.io/library/alpine", Credential{IdentityToken: "s3cr3t-handover-id"}, true},
	}
	for _, tc := range tests {
		got, ok := s2.Get(tc.ref)
		if got != tc.want || ok != tc.wantOK {
			t.Errorf("Get(%q) = %v, %v; want %v, %v", tc.ref, got, ok, tc.want, tc.wantOK)
		}
	}

	// Expiry: the first entry is 31 minutes older than the TTL allows.
	clock.Advance(31 * time.Minute)
	if _, ok := s2.Get("reg.example/app:1"); ok {
		t.Errorf("Get of an expired entry succeeded")
	}
	if n, err := s2.Prune(); n != 1 || err != nil {
		t.Errorf("Prune = %d, %v; want 1, nil", n, err)
	}
	// A zero credential deletes (podman pulled anonymously).
	if err := s2.Put("alpine", Credential{}); err != nil {
		t.Fatal(err)
	}
	s3, err := OpenHandoverStore(opts)
	if err != nil || s3.Len() != 0 {
		t.Errorf("after prune and delete: Len = %d, %v; want 0", s3.Len(), err)
	}
	raw, _ := os.ReadFile(path)
	if strings.Contains(string(raw), "s3cr3t") {
		t.Errorf("file still holds deleted secrets: %s", raw)
	}
}

func TestHandoverStoreCorrupt(t *testing.T) {
	tests := []struct{ name, content string }{
		{"garbage", "{not json"},
		{"truncated", `{"version":1,"entries":{"reg.example/a:1":{"password":"s3cr3t-trunc`},
		{"unknown version", `{"version":99,"entries":{}}`},
		{"wrong shape", `[1,2,3]`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			secret("", "s3cr3t-trunc")
			path := filepath.Join(t.TempDir(), "handover.json")
			writeFile(t, path, tc.content)
			s, err := OpenHandoverStore(HandoverOptions{Path: path, Persist: true})
			noteErr(err)
			if !errors.Is(err, ErrCorruptHandover) || s == nil || s.Len() != 0 {
				t.Fatalf("OpenHandoverStore = %v, %v; want an empty store and ErrCorruptHandover", s, err)
			}
			if raw, err := os.ReadFile(path + ".corrupt"); err != nil || string(raw) != tc.content {
				t.Errorf("corrupt file not moved aside: %v", err)
			}
			// The store works on: a Put writes a fresh file.
			if err := s.Put("reg.example/a:1", Credential{Username: "u", Password: secret("u", "s3cr3t-after")}); err != nil {
				t.Fatal(err)
			}
			if _, err := OpenHandoverStore(HandoverOptions{Path: path, Persist: true}); err != nil {
				t.Errorf("reopen after Put: %v", err)
			}
		})
	}

	// A Manager starts anyway and reports the problem.
	path := filepath.Join(t.TempDir(), "handover.json")
	writeFile(t, path, "{corrupt")
	m := newManager(t, Options{HandoverFile: path, HandoverPersist: true})
	st := m.Stats()
	noteText(st.String())
	if !strings.Contains(st.HandoverLoadError, "corrupt") || !strings.Contains(st.String(), "corrupt") {
		t.Errorf("Stats() = %+v, want HandoverLoadError about the corrupt file", st)
	}
}

// TestHandoverPrecedence checks, through a token server, that handed-over
// credentials are used for their exact reference only, take precedence over
// the auth files there, and survive a new Manager when persisted.
func TestHandoverPrecedence(t *testing.T) {
	r := newRegistry(t, registryConfig{})
	r.ts.AddUser("bob", secret("bob", "s3cr3t-bob"), map[string][]string{"team/app": {"pull"}})
	r.ts.AddUser("alice", secret("alice", "s3cr3t-alice"), map[string][]string{"team/app": {"pull"}})
	e := newUserEnv(t)
	// The files hold a wrong password for alice.
	writeFile(t, filepath.Join(e.configHome, "containers", "auth.json"),
		authJSON(map[string]authEntry{r.proxy.Host(): {"alice", secret("alice", "s3cr3t-wrong"), ""}}, nil))
	o := e.options()
	o.HandoverFile = filepath.Join(t.TempDir(), "handover.json")
	o.HandoverPersist = true
	m := newManager(t, o)
	handedRef := r.ref(t, "team/app")
	otherTag := mustRef(t, r.proxy.Host()+"/team/app:other")
	helperInput := fmt.Sprintf(`{%q: {"username": "bob", "password": "s3cr3t-bob"}}`, handedRef.String())
	creds, err := ParseAuthHelperInput(strings.NewReader(helperInput))
	if err != nil {
		t.Fatal(err)
	}
	if err := m.HandoverAll(creds); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	check := func(m *Manager) {
		t.Helper()
		status, _, err := get(ctx, m.Transport(handedRef, nil, nil), r.blobURL("team/app"), "bytes=0-9")
		if err != nil || status != 206 {
			t.Errorf("handed-over reference: status %d, %v; want 206", status, err)
		}
		_, _, err = get(ctx, m.Transport(otherTag, nil, nil), r.blobURL("team/app"), "bytes=0-9")
		if !errors.Is(err, ErrUnauthorized) {
			t.Errorf("other tag (file credentials with a wrong password): err = %v, want ErrUnauthorized", err)
		}
	}
	check(m)
	m2 := newManager(t, o)
	if got := m2.Stats().HandoverEntries; got != 1 {
		t.Errorf("new Manager: HandoverEntries = %d, want 1", got)
	}
	check(m2)

	// New credentials for the reference replace the old ones and their tokens.
	if err := m2.Handover(handedRef.String(), Credential{Username: "bob", Password: secret("bob", "s3cr3t-bob-old")}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := get(ctx, m2.Transport(handedRef, nil, nil), r.blobURL("team/app"), "bytes=0-9"); !errors.Is(err, ErrUnauthorized) {
		t.Errorf("after handing over a wrong password: err = %v, want ErrUnauthorized", err)
	}
}

// TestHandoverMemoryOnlyByDefault: without HandoverPersist nothing is
// written, and a credentials file an older version left behind (with the
// temporary files of a crash) is deleted at start.
func TestHandoverMemoryOnlyByDefault(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "auth", "handover.json")
	old := fmt.Sprintf(`{"version":1,"entries":{"reg.example/app:1":{"username":"u","password":%q,"received":"2030-01-01T00:00:00Z"}}}`,
		secret("u", "s3cr3t-left-behind"))
	writeFile(t, path, old)
	writeFile(t, filepath.Join(dir, "auth", ".handover.json.tmp-7"), old)
	m := newManager(t, Options{HandoverFile: path})
	if got := m.Stats().HandoverEntries; got != 0 {
		t.Errorf("HandoverEntries = %d, want 0: a file must not be loaded when persistence is off", got)
	}
	if err := m.Handover("reg.example/app:2", Credential{Username: "u", Password: secret("u", "s3cr3t-memory")}); err != nil {
		t.Fatal(err)
	}
	if got := m.Stats().HandoverEntries; got != 1 {
		t.Errorf("HandoverEntries = %d, want 1", got)
	}
	ents, err := os.ReadDir(filepath.Join(dir, "auth"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		t.Errorf("%s left in the auth directory; want nothing on disk", e.Name())
	}
}

// TestHandoverPersistTTL: persisted credentials leave the file after
// PersistTTL (while memory keeps them until TTL), are not loaded after it,
// and the store removes them from disk by itself.
func TestHandoverPersistTTL(t *testing.T) {
	clock := authtest.NewClock(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
	path := filepath.Join(t.TempDir(), "handover.json")
	opts := HandoverOptions{Path: path, Persist: true, TTL: 24 * time.Hour, PersistTTL: time.Hour, Now: clock.Now}
	s, err := OpenHandoverStore(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	pw := secret("u", "s3cr3t-persisted")
	if err := s.Put("reg.example/app:1", Credential{Username: "u", Password: pw}); err != nil {
		t.Fatal(err)
	}
	clock.Advance(50 * time.Minute)
	if err := s.Put("reg.example/app:2", Credential{Username: "v", Password: secret("v", "s3cr3t-younger")}); err != nil {
		t.Fatal(err)
	}
	onDisk := func() string {
		raw, err := os.ReadFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			return ""
		}
		if err != nil {
			t.Fatal(err)
		}
		return string(raw)
	}
	if !strings.Contains(onDisk(), pw) {
		t.Fatal("the persisted file lacks the credential")
	}
	clock.Advance(11 * time.Minute) // app:1 is 61 min old
	if n, err := s.Prune(); n != 0 || err != nil {
		t.Errorf("Prune = %d, %v; want 0 (still in memory), nil", n, err)
	}
	if strings.Contains(onDisk(), pw) || !strings.Contains(onDisk(), "reg.example/app:2") {
		t.Errorf("after PersistTTL the file holds %q; want only app:2", onDisk())
	}
	if _, ok := s.Get("reg.example/app:1"); !ok {
		t.Error("a credential past PersistTTL but within TTL is gone from memory")
	}
	s2, err := OpenHandoverStore(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if _, ok := s2.Get("reg.example/app:1"); ok {
		t.Error("a credential past PersistTTL came back after a restart")
	}
	if _, ok := s2.Get("reg.example/app:2"); !ok {
		t.Error("a credential within PersistTTL did not survive a restart")
	}
	clock.Advance(time.Hour)
	if _, err := s2.Prune(); err != nil {
		t.Fatal(err)
	}
	if got := onDisk(); got != "" {
		t.Errorf("after every credential passed PersistTTL the file still exists: %q", got)
	}

	// On the real clock the timer removes them without any call.
	realPath := filepath.Join(t.TempDir(), "handover.json")
	rs, err := OpenHandoverStore(HandoverOptions{Path: realPath, Persist: true, PersistTTL: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	if err := rs.Put("reg.example/app:3", Credential{Username: "w", Password: secret("w", "s3cr3t-timer")}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(realPath); errors.Is(err, fs.ErrNotExist) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the file still holds the credential 30 s after its PersistTTL of 100 ms")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, ok := rs.Get("reg.example/app:3"); !ok {
		t.Error("the timer removed the credential from memory too")
	}
}

// TestHandoverAnonymousDeletes: when podman reads the same reference
// anonymously (after `podman logout`, containers/image hands over an empty
// object), the handed-over credential, its tokens and its file entry go:
// the next fetch uses the auth files only.
func TestHandoverAnonymousDeletes(t *testing.T) {
	r := newRegistry(t, registryConfig{})
	r.ts.AddUser("bob", secret("bob", "s3cr3t-bob2"), map[string][]string{"team/app": {"pull"}})
	e := newUserEnv(t)
	o := e.options() // the auth files hold nothing for the registry
	o.HandoverFile = filepath.Join(t.TempDir(), "handover.json")
	o.HandoverPersist = true
	m := newManager(t, o)
	ref := r.ref(t, "team/app")
	ctx := context.Background()
	in := func(body string) {
		t.Helper()
		creds, err := ParseAuthHelperInput(strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if err := m.HandoverAll(creds); err != nil {
			t.Fatal(err)
		}
	}
	in(fmt.Sprintf(`{%q: {"username": "bob", "password": "s3cr3t-bob2"}}`, ref.String()))
	tr := m.Transport(ref, nil, nil)
	if status, _, err := get(ctx, tr, r.blobURL("team/app"), "bytes=0-9"); err != nil || status != 206 {
		t.Fatalf("with handed-over credentials: %d, %v", status, err)
	}
	// containers/image's JSON for an anonymous read (omitempty fields).
	in(fmt.Sprintf(`{%q: {}}`, ref.String()))
	if got := m.Stats().HandoverEntries; got != 0 {
		t.Errorf("HandoverEntries after an anonymous handover = %d, want 0", got)
	}
	if _, err := os.Stat(o.HandoverFile); !errors.Is(err, fs.ErrNotExist) {
		raw, _ := os.ReadFile(o.HandoverFile)
		if strings.Contains(string(raw), "s3cr3t-bob2") {
			t.Errorf("the file still holds the credential: %v", err)
		}
	}
	if _, _, err := get(ctx, tr, r.blobURL("team/app"), "bytes=0-9"); !errors.Is(err, ErrUnauthorized) {
		t.Errorf("after the anonymous handover: err = %v, want ErrUnauthorized (no cached token, no credential)", err)
	}
}
