package layerstore

import (
	"context"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/layerstore/config"
)

// TestStartupProfileSharedByTheFleet: machine A records which spans the
// image's container reads first and shares the profile with the index; on
// machine B, looking the image up fetches exactly those spans at once, so
// the same reads then ask the registry for nothing.
func TestStartupProfileSharedByTheFleet(t *testing.T) {
	reg := newTestRegistry(t)
	l := stdLayer(t, 31, 1500, 400)
	img := reg.pushImage(t, "app/profiled", "v1", []*testLayer{l}, imageOptions{})
	shared := func(c *config.Config) { c.Artifacts.SharedRepository = reg.host + "/lazypull/artifacts" }
	a := newTestStore(t, reg, shared, Options{})
	a.prof.window = 2 * time.Second // longer than the reads below take
	lv := a.mustLookup(t, img.ref, l.digest)
	c, _ := lv.Content()
	files := []string{"etc/hostname", "data/log.txt"}
	for _, name := range files {
		want, _ := l.content(name)
		if got, err := readFile(context.Background(), c, entryIndex(t, c, name), len(want), 64<<10); err != nil || string(got) != string(want) {
			t.Fatalf("read %s: %v", name, err)
		}
	}
	var prof *profileFile
	waitUntil(t, "the profile recorded and shared", func() bool {
		var err error
		prof, err = loadProfile(context.Background(), a.shared, img.digest)
		return err == nil
	})
	if len(prof.Spans) == 0 || prof.Runs != 1 || prof.Manifest != img.digest {
		t.Fatalf("profile %+v, want the spans read in one run of %s", prof, img.digest)
	}
	read := map[int]bool{}
	for _, k := range prof.Spans {
		read[k.Span] = true
	}
	a.closeStore()

	// (Without read-ahead: it would fetch the spans after those read.)
	b := newTestStore(t, reg, func(c *config.Config) { shared(c); c.Fetch.ReadAhead = 0 }, Options{})
	lb := b.mustLookup(t, img.ref, l.digest)
	layer := lb.(*layerView).l
	// B's index comes from the shared store: not verified here, it serves
	// a span once the layer's verification has proven its checkpoint
	// (proof.go), so the replay proves the profiled spans too, fetching
	// the layer in order up to the last of them.
	last := 0
	for id := range read {
		last = max(last, id)
	}
	waitUntil(t, "the profile's spans fetched and proven", func() bool {
		for id := range read {
			if !layer.spans.Present(id) {
				return false
			}
		}
		return layer.verified.Load() || layer.proof.proven.Load() > int64(last)
	})
	b.settle(t)
	mark := reg.mark()
	cb, _ := lb.Content()
	for _, name := range files {
		want, _ := l.content(name)
		if got, err := readFile(context.Background(), cb, entryIndex(t, cb, name), len(want), 64<<10); err != nil || string(got) != string(want) {
			t.Fatalf("machine B: read %s: %v", name, err)
		}
	}
	if got := reg.since(mark, blobGets(l.digest)); len(got) != 0 {
		t.Errorf("machine B sent %d blob requests for the profiled reads, want 0: %+v", len(got), got)
	}
}

func TestMergeProfileAges(t *testing.T) {
	m := digest.FromString("manifest")
	k := func(span int) profileSpan { return profileSpan{Layer: "sha256:l", Ztoc: "sha256:z", Span: span} }
	p := mergeProfile(nil, m, []profileSpan{k(5), k(1)})
	for run := 0; run < profileMaxAge; run++ {
		p = mergeProfile(p, m, []profileSpan{k(7), k(5)})
	}
	var got []int
	for _, s := range p.Spans {
		got = append(got, s.Span)
	}
	// 1 was last read profileMaxAge runs ago: still there, last.
	if want := []int{7, 5, 1}; len(got) != 3 || got[0] != 7 || got[1] != 5 || got[2] != 1 {
		t.Fatalf("after %d runs: spans %v, want %v", profileMaxAge+1, got, want)
	}
	p = mergeProfile(p, m, []profileSpan{k(7)})
	got = got[:0]
	for _, s := range p.Spans {
		got = append(got, s.Span)
	}
	if len(got) != 2 || got[0] != 7 || got[1] != 5 || p.Runs != profileMaxAge+2 {
		t.Errorf("after one more run: spans %v runs %d, want [7 5] and the unread span aged out", got, p.Runs)
	}
}
