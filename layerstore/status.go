package layerstore

import (
	"context"
	"time"

	"github.com/lazypull/lazypull/layerstore/control"
)

// Status implements control.Service.
func (s *Store) Status(context.Context) (*control.Status, error) {
	rs := s.client.Stats()
	cs := s.spans.Stats()
	as := s.local.Stats()
	st := &control.Status{
		Version:    s.opts.Version,
		Uptime:     time.Since(s.started).Round(time.Second),
		MountPoint: s.cfg.MountPoint,
		RootDir:    s.cfg.RootDir,
		Registry: control.RegistryStats{
			Requests:       rs.Requests,
			BytesFetched:   rs.ManifestBytes + rs.BlobRangeBytes + rs.BlobFullBytes,
			ManifestBytes:  rs.ManifestBytes,
			RangeBytes:     rs.BlobRangeBytes,
			FullBlobBytes:  rs.BlobFullBytes,
			Retries:        rs.Retries,
			Errors:         rs.Errors,
			RedirectsFresh: rs.Redirects,
		},
		Cache: control.CacheStats{
			SpanEntries: cs.Entries, SpanBytes: cs.Bytes, SpanMaxBytes: cs.MaxBytes,
			SpanHits: cs.Hits, SpanMisses: cs.Misses, SpanEvictions: cs.Evictions,
			ArtifactBlobs: as.Entries, ArtifactBytes: as.Bytes, ArtifactMaxSize: as.MaxBytes,
		},
		Reads: s.metrics.readStats(),
	}
	if s.opts.AuthStats != nil {
		st.Auth = s.opts.AuthStats()
	}
	for _, l := range s.loadedLayers() {
		st.Layers = append(st.Layers, s.layerStatus(l))
	}
	return st, nil
}

// loadedLayers returns the layers loaded now.
func (s *Store) loadedLayers() []*layer {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*layer, 0, len(s.layers))
	for _, l := range s.layers {
		out = append(out, l)
	}
	return out
}

func (s *Store) layerStatus(l *layer) control.LayerStatus {
	present, _ := l.spans.Counts()
	ms := l.spans.Stats()
	l.mu.Lock()
	refs := make([]string, len(l.refs))
	for i, r := range l.refs {
		refs[i] = r.String()
	}
	ls := control.LayerStatus{
		Digest:         l.digest.String(),
		Refs:           refs,
		Size:           l.size,
		Spans:          l.spans.NumSpans(),
		SpansCached:    present,
		BytesFetched:   ms.FetchedBytes,
		InUse:          l.uses,
		Views:          l.views,
		Verified:       l.verified.Load(),
		IndexSource:    l.source,
		Format:         l.idx.Format(),
		TOCDigest:      l.tocDigest.String(),
		Endpoint:       servedBy(l.blobs),
		ReadsServed:    l.reads.Load(),
		ReadErrors:     l.readErrors.Load(),
		FirstMountedAt: l.mounted.UTC().Format(time.RFC3339),
		Bad:            l.spans.Bad(),
	}
	l.mu.Unlock()
	ls.Prefetch = s.fill.status(l)
	if l.proof.needed && !ls.Verified {
		// Bytes are served up to the proven checkpoints (proof.go).
		ls.Proving, ls.SpansProven = true, int(min(l.proof.proven.Load(), int64(ls.Spans)))
	}
	return ls
}
