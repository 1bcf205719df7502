package diskcache

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"
)

func data(n int, b byte) []byte { return bytes.Repeat([]byte{b}, n) }

func k(g, n string) Key { return Key{Group: g, Name: n} }

func mustOpen(t *testing.T, dir string, max int64) *Cache {
	t.Helper()
	c, err := Open(dir, max)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestPutReadRemove(t *testing.T) {
	c := mustOpen(t, t.TempDir(), 0)
	key := k("layer-a", "c3")
	if _, err := c.ReadFile(key); !errors.Is(err, ErrNotFound) {
		t.Fatalf("ReadFile(empty) = %v, want ErrNotFound", err)
	}
	if err := c.Put(key, data(100, 'x')); err != nil {
		t.Fatal(err)
	}
	got, err := c.ReadFile(key)
	if err != nil || !bytes.Equal(got, data(100, 'x')) {
		t.Fatalf("ReadFile = %q, %v", got, err)
	}
	if n, b := c.GroupUsage("layer-a"); n != 1 || b != 100 {
		t.Errorf("GroupUsage = %d, %d, want 1, 100", n, b)
	}
	if err := c.Remove(key); err != nil {
		t.Fatal(err)
	}
	if c.Has(key) {
		t.Error("Has after Remove = true")
	}
	if s := c.Stats(); s.Hits != 1 || s.Misses != 1 || s.Entries != 0 || s.Bytes != 0 {
		t.Errorf("Stats = %+v, want 1 hit, 1 miss, empty", s)
	}
}

func TestInvalidKeys(t *testing.T) {
	c := mustOpen(t, t.TempDir(), 0)
	for _, key := range []Key{{"", "a"}, {"g", ""}, {"..", "a"}, {"g", "../x"}, {"g/h", "a"}, {".tmp-x", "a"}, {"g", "a b"}} {
		if err := c.Put(key, []byte("x")); !errors.Is(err, ErrInvalidKey) {
			t.Errorf("Put(%q) = %v, want ErrInvalidKey", key, err)
		}
	}
}

func TestWriterCommitAbort(t *testing.T) {
	dir := t.TempDir()
	c := mustOpen(t, dir, 0)
	w, err := c.Create(k("g", "a"))
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("hello "))
	w.Write([]byte("world"))
	if c.Has(k("g", "a")) {
		t.Fatal("entry visible before Commit")
	}
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(); err == nil {
		t.Error("second Commit succeeded")
	}
	got, _ := c.ReadFile(k("g", "a"))
	if string(got) != "hello world" {
		t.Errorf("content = %q", got)
	}
	w2, _ := c.Create(k("g", "b"))
	w2.Write([]byte("partial"))
	w2.Abort()
	if c.Has(k("g", "b")) {
		t.Error("aborted entry visible")
	}
	ents, _ := os.ReadDir(filepath.Join(dir, "g"))
	if len(ents) != 1 {
		t.Errorf("files in group dir after abort: %v, want only the committed entry", ents)
	}
	// Replacing an entry keeps one entry with the new size.
	if err := c.Put(k("g", "a"), []byte("x")); err != nil {
		t.Fatal(err)
	}
	if s := c.Stats(); s.Entries != 1 || s.Bytes != 1 {
		t.Errorf("after replace: %+v, want 1 entry of 1 byte", s)
	}
}

func TestReopenKeepsEntriesAndDropsTemporaries(t *testing.T) {
	dir := t.TempDir()
	c := mustOpen(t, dir, 0)
	for i := 0; i < 5; i++ {
		if err := c.Put(k("layer-a", string(rune('a'+i))), data(10+i, byte('a'+i))); err != nil {
			t.Fatal(err)
		}
	}
	// A write interrupted by kill -9 leaves a temporary file behind.
	w, _ := c.Create(k("layer-a", "z"))
	w.Write([]byte("partial"))
	tmp := w.f.Name()
	w.f.Close()
	c2 := mustOpen(t, dir, 0)
	if s := c2.Stats(); s.Entries != 5 || s.Bytes != 10+11+12+13+14 {
		t.Errorf("reopened Stats = %+v, want 5 entries of 60 bytes", s)
	}
	if _, err := os.Stat(tmp); !os.IsNotExist(err) {
		t.Errorf("temporary file survived Open: %v", err)
	}
	got, err := c2.ReadFile(k("layer-a", "e"))
	if err != nil || !bytes.Equal(got, data(14, 'e')) {
		t.Errorf("ReadFile after reopen = %q, %v", got, err)
	}
}

func TestReopenOrdersByLastUse(t *testing.T) {
	dir := t.TempDir()
	c := mustOpen(t, dir, 0)
	for _, n := range []string{"old", "mid", "new"} {
		c.Put(k("g", n), data(100, 'x'))
	}
	base := time.Now().Add(-time.Hour)
	for i, n := range []string{"old", "mid", "new"} {
		ts := base.Add(time.Duration(i) * time.Minute)
		os.Chtimes(filepath.Join(dir, "g", n), ts, ts)
	}
	c2 := mustOpen(t, dir, 250) // room for two: the oldest goes
	if c2.Has(k("g", "old")) || !c2.Has(k("g", "mid")) || !c2.Has(k("g", "new")) {
		t.Errorf("after reopening under a cap: old=%v mid=%v new=%v, want false true true",
			c2.Has(k("g", "old")), c2.Has(k("g", "mid")), c2.Has(k("g", "new")))
	}
}

func TestEvictionLRUAndPins(t *testing.T) {
	c := mustOpen(t, t.TempDir(), 300)
	now := time.Unix(1000, 0)
	c.now = func() time.Time { return now }
	for _, n := range []string{"0", "1", "2"} {
		if err := c.Put(k("a", n), data(100, 'a')); err != nil {
			t.Fatal(err)
		}
	}
	// Read entry 0 so entry 1 is the least recently used.
	if _, err := c.ReadFile(k("a", "0")); err != nil {
		t.Fatal(err)
	}
	if err := c.Put(k("b", "0"), data(100, 'b')); err != nil {
		t.Fatal(err)
	}
	if c.Has(k("a", "1")) {
		t.Error("least recently used entry not evicted")
	}
	for _, key := range []Key{k("a", "0"), k("a", "2"), k("b", "0")} {
		if !c.Has(key) {
			t.Errorf("%v evicted, want kept", key)
		}
	}
	if s := c.Stats(); s.Bytes > 300 || s.Evictions != 1 {
		t.Errorf("Stats = %+v, want <= 300 bytes, 1 eviction", s)
	}
	// Pinned groups are never evicted; when only pinned entries are left,
	// Commit refuses instead of breaking the cap.
	c.Pin("a")
	c.Pin("b")
	if err := c.Put(k("b", "1"), data(100, 'c')); !errors.Is(err, ErrFull) {
		t.Errorf("Put into a cache full of pinned entries = %v, want ErrFull", err)
	}
	c.Unpin("b")
	if err := c.Put(k("a", "9"), data(100, 'd')); err != nil {
		t.Errorf("Put after Unpin(b) = %v", err)
	}
	if c.Has(k("b", "0")) || !c.Has(k("a", "0")) || !c.Has(k("a", "2")) {
		t.Error("eviction took a pinned entry or kept the unpinned one")
	}
	if s := c.Stats(); s.Bytes > 300 || s.Rejected != 1 {
		t.Errorf("Stats = %+v, want <= 300 bytes and 1 rejected put", s)
	}
	if err := c.Put(k("x", "big"), data(301, 'x')); !errors.Is(err, ErrFull) {
		t.Errorf("Put larger than the cap = %v, want ErrFull", err)
	}
}

func TestOpenFileSurvivesEviction(t *testing.T) {
	c := mustOpen(t, t.TempDir(), 100)
	c.Put(k("g", "a"), data(100, 'a'))
	f, size, err := c.Open(k("g", "a"))
	if err != nil || size != 100 {
		t.Fatalf("Open = %d, %v", size, err)
	}
	defer f.Close()
	c.Put(k("g", "b"), data(100, 'b')) // evicts a
	if c.Has(k("g", "a")) {
		t.Fatal("a not evicted")
	}
	got, err := io.ReadAll(f)
	if err != nil || !bytes.Equal(got, data(100, 'a')) {
		t.Errorf("reading an evicted entry through an open file: %d bytes, %v", len(got), err)
	}
}

func TestRemovedFromOutside(t *testing.T) {
	dir := t.TempDir()
	c := mustOpen(t, dir, 0)
	c.Put(k("g", "a"), data(10, 'a'))
	os.Remove(filepath.Join(dir, "g", "a"))
	if _, _, err := c.Open(k("g", "a")); !errors.Is(err, ErrNotFound) {
		t.Errorf("Open of a file removed from outside = %v, want ErrNotFound", err)
	}
	if s := c.Stats(); s.Entries != 0 || s.Bytes != 0 {
		t.Errorf("index still counts the vanished entry: %+v", s)
	}
}

func TestPruneAndRemoveGroup(t *testing.T) {
	c := mustOpen(t, t.TempDir(), 0)
	for _, n := range []string{"0", "1", "2", "3"} {
		c.Put(k("a", n), data(50, 'a'))
		c.Put(k("b", n), data(50, 'b'))
	}
	c.Pin("b")
	if freed := c.Prune(0); freed != 200 {
		t.Errorf("Prune(0) freed %d, want 200 (all of the unpinned group)", freed)
	}
	if n, b := c.GroupUsage("b"); n != 4 || b != 200 {
		t.Errorf("pinned group has %d entries/%d bytes after prune, want 4/200", n, b)
	}
	if err := c.RemoveGroup("b"); err != nil {
		t.Fatal(err)
	}
	if s := c.Stats(); s.Entries != 0 || s.Bytes != 0 {
		t.Errorf("after RemoveGroup: %+v, want empty", s)
	}
	if !c.Pinned("b") {
		t.Error("RemoveGroup dropped the group's pin")
	}
	c.Unpin("b")
	if c.Pinned("b") {
		t.Error("still pinned after Unpin")
	}
}

func TestConcurrentPutRead(t *testing.T) {
	c := mustOpen(t, t.TempDir(), 20*64)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				key := k("a", strconv.Itoa(i%40))
				want := data(64, byte(i%40))
				if err := c.Put(key, want); err != nil && !errors.Is(err, ErrFull) {
					t.Error(err)
					return
				}
				if got, err := c.ReadFile(key); err == nil && !bytes.Equal(got, want) {
					t.Errorf("ReadFile(%v) returned another entry's bytes", key)
					return
				}
			}
		}()
	}
	wg.Wait()
	if s := c.Stats(); s.Bytes > 20*64 {
		t.Errorf("cache holds %d bytes, cap %d", s.Bytes, 20*64)
	}
}

func TestWriteFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "sub", "f")
	if err := WriteFile(p, []byte("one"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(p, []byte("two"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(p)
	st, _ := os.Stat(p)
	if string(got) != "two" || st.Mode().Perm() != 0o600 {
		t.Errorf("content %q mode %v, want two 0600", got, st.Mode().Perm())
	}
	os.WriteFile(filepath.Join(dir, "sub", tmpPrefix+"123"), []byte("x"), 0o600)
	RemoveTemporaries(filepath.Join(dir, "sub"))
	ents, _ := os.ReadDir(filepath.Join(dir, "sub"))
	if len(ents) != 1 {
		t.Errorf("after RemoveTemporaries: %v", ents)
	}
}

func TestRenameGroup(t *testing.T) {
	dir := t.TempDir()
	c := mustOpen(t, dir, 0)
	c.Put(k("tmp", "a"), data(10, 'a'))
	c.Put(k("tmp", "b"), data(20, 'b'))
	c.Put(k("final", "old"), data(5, 'o'))
	if err := c.RenameGroup("tmp", "final"); err != nil {
		t.Fatal(err)
	}
	if n, b := c.GroupUsage("final"); n != 2 || b != 30 {
		t.Errorf("final group: %d entries, %d bytes; want 2, 30 (the old entry replaced)", n, b)
	}
	if n, _ := c.GroupUsage("tmp"); n != 0 {
		t.Errorf("tmp group still has %d entries", n)
	}
	got, err := c.ReadFile(k("final", "b"))
	if err != nil || !bytes.Equal(got, data(20, 'b')) {
		t.Errorf("moved entry: %q, %v", got, err)
	}
	c2 := mustOpen(t, dir, 0)
	if s := c2.Stats(); s.Entries != 2 || s.Bytes != 30 {
		t.Errorf("after reopen: %+v", s)
	}
	if err := c.RenameGroup("nothing", "final2"); err != nil {
		t.Errorf("RenameGroup of an empty group = %v", err)
	}
}
