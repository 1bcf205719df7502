package alsfs

import (
	"archive/tar"
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
)

// reauthResolver is a testResolver that also implements Reauthorizer:
// denied refs are refused.
type reauthResolver struct {
	*testResolver
	mu     sync.Mutex
	denied map[string]bool
	calls  int
}

var _ Reauthorizer = (*reauthResolver)(nil)

func (r *reauthResolver) Reauthorize(_ context.Context, ref string, _ digest.Digest) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	if r.denied[ref] {
		return errors.New("credentials withdrawn")
	}
	return nil
}

func (r *reauthResolver) deny(ref string, v bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.denied[ref] = v
}

// TestReauthorizeOnLookup: a layer directory already served is
// re-authorized when the kernel looks it up again (after LayerDirTimeout):
// refused, it is gone (ENOENT, its layer released once the kernel forgets
// it, no new Lookup); allowed again, the next lookup resolves it anew. The
// <mnt>/<digest> form has no ref to authorize and is not asked.
func TestReauthorizeOnLookup(t *testing.T) {
	canMount(t)
	d := layerDigest("reauth")
	r := &reauthResolver{testResolver: newTestResolver(), denied: map[string]bool{}}
	r.add(testRef, d, newTestLayer(t, []tarEntry{{name: "f", typ: tar.TypeReg, mode: 0o644, data: []byte("x")}}))
	_, mnt := mountTest(t, r, Options{SingleUser: true, LayerDirTimeout: 10 * time.Millisecond, ReadAheadKB: -1})
	info := filepath.Join(mnt, encodeRef(testRef), d.String(), "info")
	stat := func() error {
		_, err := os.Stat(info)
		return err
	}
	if err := stat(); err != nil {
		t.Fatalf("stat %s: %v", info, err)
	}
	time.Sleep(50 * time.Millisecond)
	if err := stat(); err != nil {
		t.Fatalf("stat after the entry expired, still authorized: %v", err)
	}
	r.mu.Lock()
	calls := r.calls
	r.mu.Unlock()
	if calls == 0 {
		t.Fatalf("no Reauthorize call on the second lookup")
	}

	// Withdrawn: a new Lookup would prove access anew and fail too (as
	// the store's does). The kernel, refused on revalidation, looks the
	// name up once more: that reaches Lookup, which refuses.
	withdrawn := errors.New("credentials withdrawn")
	r.deny(testRef, true)
	r.setFail(testRef, d, withdrawn)
	time.Sleep(50 * time.Millisecond)
	if err := stat(); !errors.Is(err, syscall.ENOENT) {
		t.Errorf("stat after the credentials were withdrawn: %v, want ENOENT", err)
	}
	if lookups, _, _ := r.counts(testRef, d); lookups < 1 || lookups > 2 {
		t.Errorf("%d Lookups, want 1 or 2 (the kernel's retry)", lookups)
	}
	before, _, _ := r.counts(testRef, d)

	r.deny(testRef, false)
	r.setFail(testRef, d, nil)
	if err := stat(); err != nil {
		t.Errorf("stat once allowed again: %v", err)
	}
	if lookups, _, _ := r.counts(testRef, d); lookups != before+1 {
		t.Errorf("%d Lookups, want %d (the evicted directory resolved anew)", lookups, before+1)
	}
	deadline := time.Now().Add(5 * time.Second)
	for r.layerReleases(testRef, d) < 1 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := r.layerReleases(testRef, d); n < 1 {
		t.Errorf("the refused directory's layer was released %d times, want 1", n)
	}
}
