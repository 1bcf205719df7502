package authbridge

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"
)

// Defaults of the handover store.
const (
	// DefaultHandoverTTL is how long a handed-over credential is kept after
	// podman last handed it over. Containers keep reading lazily pulled layers
	// long after the pull, so this is generous.
	DefaultHandoverTTL = 7 * 24 * time.Hour
	// MaxHandoverEntries bounds the number of stored image references; when a
	// new one arrives beyond that, the oldest is dropped.
	MaxHandoverEntries = 4096
	// handoverVersion is the version of the persisted file format.
	handoverVersion = 1
)

// HandoverStore keeps the credentials podman handed over through the
// additional-layer-store auth helper, keyed by exact image reference. It lives
// in memory and, when it has a path, in a 0600 JSON file that is replaced
// atomically (temporary file, fsync, rename, fsync of the directory) on every
// change, so the credentials survive a daemon restart and a crash never leaves
// a half-written file. Entries older than the TTL are ignored and pruned.
// It is safe for concurrent use.
type HandoverStore struct {
	path string // "" = memory only
	ttl  time.Duration
	now  func() time.Time

	// mu guards entries and serializes writes of the file.
	mu      sync.Mutex
	entries map[string]handoverEntry
}

// handoverEntry is one stored credential; it is also the persisted encoding
// (unlike Credential, whose JSON form is redacted).
type handoverEntry struct {
	Username      string    `json:"username,omitempty"`
	Password      string    `json:"password,omitempty"`
	IdentityToken string    `json:"identity_token,omitempty"`
	Received      time.Time `json:"received"`
}

// handoverFile is the persisted form of a HandoverStore.
type handoverFile struct {
	Version int                      `json:"version"`
	Entries map[string]handoverEntry `json:"entries"`
}

// OpenHandoverStore opens the store persisted at path ("" = memory only).
// ttl <= 0 means DefaultHandoverTTL; now == nil means time.Now.
//
// A missing file is an empty store. A file that cannot be decoded is moved
// aside to path+".corrupt" and OpenHandoverStore returns a usable, empty
// store together with an error wrapping ErrCorruptHandover: the caller should
// report it and carry on. Any other error (unreadable file) returns a nil
// store.
func OpenHandoverStore(path string, ttl time.Duration, now func() time.Time) (*HandoverStore, error) {
	if ttl <= 0 {
		ttl = DefaultHandoverTTL
	}
	if now == nil {
		now = time.Now
	}
	s := &HandoverStore{path: path, ttl: ttl, now: now, entries: map[string]handoverEntry{}}
	if path == "" {
		return s, nil
	}
	s.removeStaleTemps()
	raw, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("authbridge: reading handed-over credentials %s: %w", path, err)
	}
	var f handoverFile
	if err := json.Unmarshal(raw, &f); err != nil || f.Version != handoverVersion {
		what := "unsupported version " + fmt.Sprint(f.Version)
		if err != nil {
			what = describeJSONError(err)
		}
		cerr := fmt.Errorf("%w %s: %s; starting with no handed-over credentials", ErrCorruptHandover, path, what)
		if rerr := os.Rename(path, path+".corrupt"); rerr != nil {
			cerr = fmt.Errorf("%w (moving it aside: %w)", cerr, rerr)
		}
		return s, cerr
	}
	for ref, e := range f.Entries {
		norm, err := normalizeRef(ref)
		if err != nil || norm != ref {
			continue // not something Put could have written; ignore the entry
		}
		s.entries[ref] = e
	}
	if s.pruneLocked() > 0 {
		if err := s.saveLocked(); err != nil {
			return nil, err
		}
	} else if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 {
		if err := os.Chmod(path, 0o600); err != nil {
			return nil, fmt.Errorf("authbridge: restricting permissions of %s: %w", path, err)
		}
	}
	return s, nil
}

// Put records c as the credential for the exact image reference ref
// (normalized like ParseAuthHelperInput does) and persists the store. A zero
// Credential deletes the entry: podman pulled that image anonymously.
func (s *HandoverStore) Put(ref string, c Credential) error {
	return s.PutAll(map[string]Credential{ref: c})
}

// PutAll is Put for several references with a single write of the file.
func (s *HandoverStore) PutAll(creds map[string]Credential) error {
	norm := make(map[string]Credential, len(creds))
	for ref, c := range creds {
		n, err := normalizeRef(ref)
		if err != nil {
			return fmt.Errorf("authbridge: handing over credentials: %w", err)
		}
		norm[n] = c
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	for ref, c := range norm {
		if c.IsZero() {
			delete(s.entries, ref)
			continue
		}
		s.entries[ref] = handoverEntry{Username: c.Username, Password: c.Password, IdentityToken: c.IdentityToken, Received: now}
	}
	s.pruneLocked()
	return s.saveLocked()
}

// Get returns the credential handed over for the exact, normalized image
// reference ref, if there is one that has not expired.
func (s *HandoverStore) Get(ref string) (Credential, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.entries[ref]
	if !ok || s.expired(e) {
		return Credential{}, false
	}
	return Credential{Username: e.Username, Password: e.Password, IdentityToken: e.IdentityToken}, true
}

// Len returns the number of stored (possibly expired, not yet pruned) entries.
func (s *HandoverStore) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.entries)
}

// Prune drops expired entries and persists the result; it returns how many
// entries were dropped.
func (s *HandoverStore) Prune() (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.pruneLocked()
	if n == 0 {
		return 0, nil
	}
	return n, s.saveLocked()
}

func (s *HandoverStore) expired(e handoverEntry) bool {
	return s.now().Sub(e.Received) > s.ttl
}

// pruneLocked drops expired entries and, beyond MaxHandoverEntries, the
// oldest ones. It returns how many were dropped. Needs s.mu.
func (s *HandoverStore) pruneLocked() int {
	n := 0
	for ref, e := range s.entries {
		if s.expired(e) {
			delete(s.entries, ref)
			n++
		}
	}
	if excess := len(s.entries) - MaxHandoverEntries; excess > 0 {
		refs := make([]string, 0, len(s.entries))
		for ref := range s.entries {
			refs = append(refs, ref)
		}
		sort.Slice(refs, func(i, j int) bool { return s.entries[refs[i]].Received.Before(s.entries[refs[j]].Received) })
		for _, ref := range refs[:excess] {
			delete(s.entries, ref)
			n++
		}
	}
	return n
}

// tempPrefix is the name prefix of temporary files next to the store file.
func (s *HandoverStore) tempPrefix() string {
	return "." + filepath.Base(s.path) + ".tmp-"
}

// removeStaleTemps deletes temporary files a crash left behind.
func (s *HandoverStore) removeStaleTemps() {
	dir := filepath.Dir(s.path)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return // the directory may not exist yet; saveLocked creates it
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), s.tempPrefix()) {
			_ = os.Remove(filepath.Join(dir, e.Name())) // best effort: a leftover is harmless
		}
	}
}

// saveLocked writes the store atomically. Needs s.mu.
func (s *HandoverStore) saveLocked() error {
	if s.path == "" {
		return nil
	}
	raw, err := json.Marshal(handoverFile{Version: handoverVersion, Entries: s.entries})
	if err != nil {
		return fmt.Errorf("authbridge: encoding handed-over credentials: %w", err)
	}
	dir := filepath.Dir(s.path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("authbridge: creating %s: %w", dir, err)
	}
	tmp, err := os.CreateTemp(dir, s.tempPrefix()) // mode 0600
	if err != nil {
		return fmt.Errorf("authbridge: saving handed-over credentials: %w", err)
	}
	tmpName := tmp.Name()
	fail := func(err error) error {
		_ = tmp.Close()
		_ = os.Remove(tmpName)
		return fmt.Errorf("authbridge: saving handed-over credentials to %s: %w", s.path, err)
	}
	if err := tmp.Chmod(0o600); err != nil {
		return fail(err)
	}
	if _, err := tmp.Write(raw); err != nil {
		return fail(err)
	}
	if err := tmp.Sync(); err != nil {
		return fail(err)
	}
	if err := tmp.Close(); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmpName, s.path); err != nil {
		_ = os.Remove(tmpName)
		return fmt.Errorf("authbridge: saving handed-over credentials to %s: %w", s.path, err)
	}
	if d, err := os.Open(dir); err == nil {
		err = d.Sync()
		_ = d.Close()
		if err != nil {
			return fmt.Errorf("authbridge: syncing %s: %w", dir, err)
		}
	}
	return nil
}
