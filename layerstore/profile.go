package layerstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/containers/image/v5/docker/reference"
	digest "github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"

	"github.com/lazypull/lazypull/layerstore/artifact"
	"github.com/lazypull/lazypull/layerstore/spans"
)

// Start-up profiles: which spans an image's containers read first, and in
// which order. The store records them per image (every run merges into the
// profile), keeps them as artifacts (local store, and the shared repository
// when artifacts.share allows), and on the next lookup of the image's
// layers, here or on any machine sharing the repository, fetches and
// inflates those spans at once, in profile order, at Demand priority, while
// the container starts. A profile is a hint: it can only make the store
// fetch spans (bounded), never serve other bytes.
const (
	// profileWindow is how long after an image's first read its reads are
	// recorded (a container's start-up).
	profileWindow = 30 * time.Second
	// profileMaxSpans bounds a profile (recorded or read).
	profileMaxSpans = 16384
	// profileMaxAge drops spans not read for this many runs.
	profileMaxAge = 3
	// profileMaxBytes bounds a profile artifact.
	profileMaxBytes = 4 << 20
)

// profileFile is a start-up profile as stored (JSON).
type profileFile struct {
	Version  int           `json:"version"`
	Manifest digest.Digest `json:"manifest"`
	// Runs counts the recordings merged into the profile.
	Runs int `json:"runs"`
	// Spans in the order to fetch them: those read in the last recording
	// in the order they were first read, then older ones.
	Spans []profileSpan `json:"spans"`
}

const profileVersion = 1

// profileSpan is one span of a profile.
type profileSpan struct {
	Layer digest.Digest `json:"layer"`
	// Ztoc is the index that cut the layer into spans: spans of another
	// index are other ranges.
	Ztoc digest.Digest `json:"ztoc"`
	Span int           `json:"span"`
	// Age is how many recordings ago the span was last read.
	Age int `json:"age"`
}

// profiles is the Store's state of start-up profiles: the recordings under
// way and the profiles loaded. The Store's methods below record and replay;
// their goroutines (the end of a recording, replays) are the Store's.
type profiles struct {
	// window is how long a recording lasts (profileWindow; tests shorten
	// it).
	window time.Duration

	mu sync.Mutex // guards the fields below
	// recording are the recordings under way, by image manifest digest.
	recording map[digest.Digest]*recording
	// replayed are the profiles loaded for images looked up, by manifest
	// digest (nil: none found), with when they were loaded.
	replayed map[digest.Digest]*loadedProfile
}

type loadedProfile struct {
	p      *profileFile
	loaded time.Time
}

// recording is one image's reads being recorded.
type recording struct {
	manifest digest.Digest
	ref      reference.Named

	mu      sync.Mutex // guards the fields below
	started bool
	order   []profileSpan
	seen    map[profileSpan]bool
}

func newProfiles() *profiles {
	return &profiles{window: profileWindow, recording: make(map[digest.Digest]*recording), replayed: make(map[digest.Digest]*loadedProfile)}
}

// recorderFor returns the recording of img's reads, starting one.
func (p *profiles) recorderFor(img digest.Digest, ref reference.Named) *recording {
	p.mu.Lock()
	defer p.mu.Unlock()
	r := p.recording[img]
	if r == nil {
		r = &recording{manifest: img, ref: ref, seen: make(map[profileSpan]bool)}
		p.recording[img] = r
	}
	return r
}

// note records that spans first..last of layer l were read. The first note
// of a recording starts its window; when it ends, the recording is merged
// into the image's profile and saved.
func (s *Store) noteRead(r *recording, l *layer, first, last int) {
	r.mu.Lock()
	start := !r.started
	r.started = true
	for id := first; id <= last && len(r.order) < profileMaxSpans; id++ {
		k := profileSpan{Layer: l.digest, Ztoc: l.indexID, Span: id}
		if !r.seen[k] {
			r.seen[k] = true
			r.order = append(r.order, k)
		}
	}
	r.mu.Unlock()
	if start {
		s.background(func(ctx context.Context) {
			t := time.NewTimer(s.prof.window)
			defer t.Stop()
			select {
			case <-ctx.Done():
			case <-t.C:
			}
			s.finishProfile(r)
		})
	}
}

// finish ends a recording: it merges it into the stored profile and saves
// the result.
func (s *Store) finishProfile(r *recording) {
	p := s.prof
	p.mu.Lock()
	if p.recording[r.manifest] == r {
		delete(p.recording, r.manifest)
	}
	p.mu.Unlock()
	r.mu.Lock()
	order := r.order
	r.mu.Unlock()
	if len(order) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	old, _ := loadProfile(ctx, s.local, r.manifest)
	merged := mergeProfile(old, r.manifest, order)
	data, err := json.Marshal(merged)
	if err != nil {
		return
	}
	d := digest.FromBytes(data)
	log := s.log.WithFields(logrus.Fields{"ref": r.ref, "spans": len(merged.Spans), "runs": merged.Runs})
	key := artifact.ProfileKey(r.manifest)
	if err := s.local.WriteBlob(ctx, d, data); err != nil {
		log.WithError(err).Warn("Saving the start-up profile")
		return
	}
	if err := s.local.WriteRef(ctx, artifact.ProfileRef, key, d); err != nil {
		log.WithError(err).Warn("Saving the start-up profile")
		return
	}
	log.Info("Recorded the image's start-up profile")
	s.shareFor(r.ref, func(ctx context.Context) error {
		if err := s.shared.WriteBlob(ctx, d, data); err != nil {
			return err
		}
		return s.shared.WriteRef(ctx, artifact.ProfileRef, key, d)
	})
}

// mergeProfile puts this run's spans first, in the order they were read,
// then the older ones not read this time (one run older), dropping those
// not read for profileMaxAge runs.
func mergeProfile(old *profileFile, manifest digest.Digest, order []profileSpan) *profileFile {
	out := &profileFile{Version: profileVersion, Manifest: manifest, Runs: 1}
	seen := make(map[profileSpan]bool, len(order))
	for _, k := range order {
		k.Age = 0
		seen[k] = true
		out.Spans = append(out.Spans, k)
	}
	if old != nil {
		out.Runs = old.Runs + 1
		for _, k := range old.Spans {
			age := k.Age + 1
			k.Age = 0
			if seen[k] || age > profileMaxAge || len(out.Spans) >= profileMaxSpans {
				continue
			}
			seen[k] = true
			k.Age = age
			out.Spans = append(out.Spans, k)
		}
	}
	return out
}

// loadProfile reads the profile of image manifest from b, checking what it
// holds.
func loadProfile(ctx context.Context, b artifact.Backend, manifest digest.Digest) (*profileFile, error) {
	d, err := b.ReadRef(ctx, artifact.ProfileRef, artifact.ProfileKey(manifest))
	if err != nil {
		return nil, err
	}
	data, err := b.ReadBlob(ctx, d)
	if err != nil {
		return nil, err
	}
	if len(data) > profileMaxBytes {
		return nil, fmt.Errorf("profile %s: %d bytes, more than %d", d, len(data), profileMaxBytes)
	}
	var f profileFile
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("profile %s: %w", d, err)
	}
	if f.Version != profileVersion || f.Manifest != manifest || len(f.Spans) > profileMaxSpans {
		return nil, fmt.Errorf("profile %s: not a profile of %s", d, manifest)
	}
	return &f, nil
}

// replay fetches, in the background, the spans of layer l that img's
// profile names (the profile is looked up once per image: local store,
// then the shared repository).
func (s *Store) replayProfile(img digest.Digest, ref reference.Named, l *layer) {
	s.background(func(ctx context.Context) {
		prof := s.profileOf(ctx, img, ref)
		if prof == nil {
			return
		}
		var ids []int
		for _, k := range prof.Spans {
			if k.Layer == l.digest && k.Ztoc == l.indexID {
				ids = append(ids, k.Span)
			}
		}
		if len(ids) == 0 {
			return
		}
		l.log.WithField("spans", len(ids)).Debug("Fetching the spans of the image's start-up profile")
		l.spans.Warm(ids, spans.Demand)
		if l.proof.needed && !l.verified.Load() && l.startProof != nil {
			// An unverified index serves these spans once the layer's
			// verification has passed them (proof.go): prove them now.
			l.startProof(slices.Max(ids))
		}
	})
}

// profileOf returns img's profile, loading it once per resolve-cache period.
func (s *Store) profileOf(ctx context.Context, img digest.Digest, ref reference.Named) *profileFile {
	p := s.prof
	ttl := time.Duration(s.cfg.Registry.ResolveCacheTTL)
	p.mu.Lock()
	if lp, ok := p.replayed[img]; ok && time.Since(lp.loaded) < ttl {
		p.mu.Unlock()
		return lp.p
	}
	p.mu.Unlock()
	prof, err := loadProfile(ctx, s.local, img)
	if err != nil && s.shared != nil {
		// A profile from the fleet is a hint, bounded: it only makes the
		// store fetch spans of this image's layers.
		prof, err = loadProfile(ctx, s.shared, img)
	}
	if err != nil && !errors.Is(err, artifact.ErrNotFound) {
		s.log.WithError(err).WithField("ref", ref).Debug("No usable start-up profile")
	}
	p.mu.Lock()
	p.replayed[img] = &loadedProfile{p: prof, loaded: time.Now()}
	p.mu.Unlock()
	return prof
}

// sweep forgets loaded profiles older than ttl.
func (p *profiles) sweep(now time.Time, ttl time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, lp := range p.replayed {
		if now.Sub(lp.loaded) > ttl {
			delete(p.replayed, k)
		}
	}
}

// viewContent is a layer's content as one image's layer directory serves
// it: reads are those of the image's containers, noted (into its start-up
// profile).
type viewContent struct {
	*layer
	note func(first, last int) // spans read, nil: not recorded
}

// ReadFile implements alsfs.LayerContent.
func (c viewContent) ReadFile(ctx context.Context, i int, p []byte, off int64) (int, error) {
	n, err := c.layer.ReadFile(ctx, i, p, off)
	if n > 0 && c.note != nil {
		lay := c.layer.idx.Layout()
		m := &c.layer.idx.Entries()[i]
		start := m.UncompressedOffset + off
		if z, ok := c.layer.idx.(*ztocIndex); ok && off == 0 {
			start, _ = z.x.HeaderRange(i) // the first read checks the header
		}
		c.note(lay.SpanOf(start), lay.SpanOf(m.UncompressedOffset+off+int64(n)-1))
	}
	return n, err
}
