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
	// DefaultHandoverTTL is how long a handed-over credential is used after
	// podman last handed it over. Containers read lazily served layers long
	// after the pull, but the layer store fetches and verifies every layer in
	// the background soon after it is mounted; a day covers that many times.
	DefaultHandoverTTL = 24 * time.Hour
	// DefaultHandoverPersistTTL is how long a handed-over credential stays in
	// the file when persistence is on: long enough to survive a restart of
	// the daemon in the middle of a pull's background fetches, short enough
	// that no credential lingers on disk.
	DefaultHandoverPersistTTL = time.Hour
	// MaxHandoverEntries bounds the number of stored image references; when a
	// new one arrives beyond that, the oldest is dropped.
	MaxHandoverEntries = 4096
	// handoverVersion is the version of the persisted file format.
	handoverVersion = 1
)

// HandoverOptions configures a HandoverStore. The zero value keeps
// credentials in memory only, for DefaultHandoverTTL.
type HandoverOptions struct {
	// Path is the file of persisted credentials (mode 0600, replaced
	// atomically). When Persist is off and a file exists there (left by an
	// earlier version or run), it is deleted when the store opens. Default
	// "": no file.
	Path string
	// Persist writes handed-over credentials to Path so that they survive a
	// restart of the daemon, for PersistTTL. Default false: memory only.
	Persist bool
	// TTL is how long a credential is used after podman last handed it over.
	// Default DefaultHandoverTTL (24 h).
	TTL time.Duration
	// PersistTTL is how long a credential stays in the file after podman
	// last handed it over; older ones are removed from the file (and not
	// loaded from it), though they stay in memory until TTL. Default
	// DefaultHandoverPersistTTL (1 h); at most TTL.
	PersistTTL time.Duration
	// Now is the clock. Default time.Now.
	Now func() time.Time
	// OnError receives errors of the background rewrite of the file that
	// removes credentials past PersistTTL (nothing else can report them).
	// Default: dropped.
	OnError func(error)
}

// HandoverStore keeps the credentials podman handed over through the
// additional-layer-store auth helper, keyed by exact image reference. By
// default it lives in memory only. With HandoverOptions.Persist it also
// keeps the credentials handed over in the last PersistTTL in a 0600 JSON
// file that is replaced atomically (temporary file, fsync, rename, fsync of
// the directory) on every change and whenever a credential passes
// PersistTTL, so that they survive a daemon restart and a crash never
// leaves a half-written file. A credential handed over as anonymous (podman
// pulled the reference without credentials, e.g. after `podman logout`)
// deletes the entry from memory and file. Entries older than TTL are
// ignored and pruned. It is safe for concurrent use; Close stops its timer.
type HandoverStore struct {
	path       string // "" = memory only
	ttl        time.Duration
	persistTTL time.Duration
	now        func() time.Time
	onError    func(error)

	// mu guards the fields below and serializes writes of the file.
	mu      sync.Mutex
	entries map[string]handoverEntry
	// fileExpiry is when the oldest credential in the file passes
	// persistTTL (zero: none in the file); timer rewrites the file then.
	fileExpiry time.Time
	timer      *time.Timer
	closed     bool
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

// OpenHandoverStore opens a store as o says.
//
// Without persistence, a file at o.Path is deleted (with any temporary
// files a crash left beside it); failing to delete it is an error. With
// persistence, a missing file is an empty store, and a file that cannot be
// decoded is moved aside to Path+".corrupt": OpenHandoverStore then returns
// a usable, empty store together with an error wrapping ErrCorruptHandover
// (the caller should report it and carry on). Any other error (unreadable
// file) returns a nil store.
func OpenHandoverStore(o HandoverOptions) (*HandoverStore, error) {
	if o.TTL <= 0 {
		o.TTL = DefaultHandoverTTL
	}
	if o.PersistTTL <= 0 {
		o.PersistTTL = DefaultHandoverPersistTTL
	}
	o.PersistTTL = min(o.PersistTTL, o.TTL)
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.OnError == nil {
		o.OnError = func(error) {}
	}
	s := &HandoverStore{ttl: o.TTL, persistTTL: o.PersistTTL, now: o.Now, onError: o.OnError, entries: map[string]handoverEntry{}}
	if o.Path == "" {
		return s, nil
	}
	if !o.Persist {
		if err := removeHandoverFiles(o.Path); err != nil {
			return nil, err
		}
		return s, nil
	}
	s.path = o.Path
	s.removeStaleTemps()
	raw, err := os.ReadFile(s.path)
	if errors.Is(err, fs.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("authbridge: reading handed-over credentials %s: %w", s.path, err)
	}
	var f handoverFile
	if err := json.Unmarshal(raw, &f); err != nil || f.Version != handoverVersion {
		what := "unsupported version " + fmt.Sprint(f.Version)
		if err != nil {
			what = describeJSONError(err)
		}
		cerr := fmt.Errorf("%w %s: %s; starting with no handed-over credentials", ErrCorruptHandover, s.path, what)
		if rerr := os.Rename(s.path, s.path+".corrupt"); rerr != nil {
			cerr = fmt.Errorf("%w (moving it aside: %w)", cerr, rerr)
		}
		return s, cerr
	}
	now := s.now()
	for ref, e := range f.Entries {
		norm, err := normalizeRef(ref)
		if err != nil || norm != ref || now.Sub(e.Received) > s.persistTTL {
			continue // not something Put could have written, or too old for the file
		}
		s.entries[ref] = e
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pruneLocked()
	// Rewrite: drops what was too old, restores mode 0600, schedules the
	// next rewrite.
	if err := s.saveLocked(); err != nil {
		return nil, err
	}
	return s, nil
}

// removeHandoverFiles deletes a credentials file and the temporary files
// beside it.
func removeHandoverFiles(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("authbridge: removing handed-over credentials %s (persistence is off): %w", path, err)
	}
	(&HandoverStore{path: path}).removeStaleTemps()
	return nil
}

// Close stops the timer that rewrites the file; the store stays usable
// in memory (and still writes the file on Put).
func (s *HandoverStore) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if s.timer != nil {
		s.timer.Stop()
	}
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

// Prune drops expired entries, rewrites the file if that or PersistTTL
// removes any credential from it, and returns how many entries were
// dropped from memory. It runs by itself (on a timer) when a credential in
// the file passes PersistTTL.
func (s *HandoverStore) Prune() (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.pruneLocked()
	if n == 0 && (s.fileExpiry.IsZero() || s.now().Before(s.fileExpiry)) {
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

// scheduleLocked arms the timer that prunes the file after d (plus a
// second, so that the oldest credential is past persistTTL). Needs s.mu.
func (s *HandoverStore) scheduleLocked(d time.Duration) {
	if s.closed {
		return
	}
	d = max(d, 0) + time.Second
	if s.timer == nil {
		s.timer = time.AfterFunc(d, func() {
			if _, err := s.Prune(); err != nil {
				s.onError(err)
			}
		})
		return
	}
	s.timer.Reset(d)
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

// saveLocked writes the credentials younger than persistTTL to the file
// atomically (removes the file when there are none) and schedules the
// rewrite that removes the oldest of them. Needs s.mu.
func (s *HandoverStore) saveLocked() error {
	if s.path == "" {
		return nil
	}
	now := s.now()
	fresh := make(map[string]handoverEntry, len(s.entries))
	var oldest time.Time
	for ref, e := range s.entries {
		if now.Sub(e.Received) <= s.persistTTL {
			fresh[ref] = e
			if oldest.IsZero() || e.Received.Before(oldest) {
				oldest = e.Received
			}
		}
	}
	s.fileExpiry = time.Time{}
	if len(fresh) == 0 {
		if err := os.Remove(s.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("authbridge: removing handed-over credentials %s: %w", s.path, err)
		}
		return nil
	}
	s.fileExpiry = oldest.Add(s.persistTTL)
	s.scheduleLocked(s.fileExpiry.Sub(now))
	raw, err := json.Marshal(handoverFile{Version: handoverVersion, Entries: fresh})
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
