package spans

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"

	"github.com/lazypull/lazypull/layerstore/diskcache"
)

// maxAttempts bounds how often a read starts over because what it was about
// to use was evicted meanwhile.
const maxAttempts = 4

// readSpan copies len(dst) uncompressed bytes of span id at offset off in
// the span: from the inflated span in memory or on disk, else by inflating
// it (once, however many readers wait).
func (m *Manager) readSpan(ctx context.Context, id int, dst []byte, off int64) error {
	var lastErr error
	for attempt := 0; attempt < maxAttempts; attempt++ {
		m.mu.Lock()
		sp := &m.spans[id]
		if data := sp.unc; data != nil {
			m.mu.Unlock()
			copy(dst, data[off:])
			return nil
		}
		inf := sp.inf
		m.mu.Unlock()
		if inf == nil {
			ok, err := m.readInflated(id, dst, off)
			if err != nil {
				return err
			}
			if ok {
				return nil
			}
			if inf = m.startInflation(id); inf == nil {
				return fmt.Errorf("spans: %w", context.Canceled)
			}
		}
		select {
		case <-inf.done:
		case <-ctx.Done():
			return ctx.Err()
		}
		if inf.err == nil {
			copy(dst, inf.data[off:])
			return nil
		}
		if !errors.Is(inf.err, errEvicted) {
			return inf.err
		}
		lastErr = inf.err
	}
	return fmt.Errorf("read span %d: %w", id, lastErr)
}

// errEvicted means a span needed for an inflation was evicted between
// fetching and inflating; the reader starts over.
var errEvicted = errors.New("span evicted meanwhile")

// readInflated reads from span id's inflated bytes on disk; it reports
// false when they are not there (or not whole, or damaged: dropped). An
// inflated span file starts with the sha256 of the bytes that follow,
// checked the first time the Manager reads the file.
func (m *Manager) readInflated(id int, dst []byte, off int64) (bool, error) {
	k := m.uncKey(id)
	f, size, err := m.o.Cache.Open(k)
	if errors.Is(err, diskcache.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer f.Close()
	u0, u1 := m.o.Layout.UncompressedRange(id)
	drop := func(why string) (bool, error) {
		m.stats.badCached.Add(1)
		m.o.Log.WithField("span", id).Warn("Dropping inflated span: " + why)
		_ = m.o.Cache.Remove(k)
		return false, nil
	}
	if size != sha256.Size+u1-u0 {
		return drop("wrong size")
	}
	m.mu.Lock()
	checked := m.spans[id].uncChecked
	m.mu.Unlock()
	if !checked {
		buf := make([]byte, size)
		if _, err := f.ReadAt(buf, 0); err != nil {
			return false, fmt.Errorf("read inflated span %d: %w", id, err)
		}
		if sum := sha256.Sum256(buf[sha256.Size:]); !bytes.Equal(sum[:], buf[:sha256.Size]) {
			return drop("content does not match its digest")
		}
		m.mu.Lock()
		m.spans[id].uncChecked = true
		m.mu.Unlock()
		copy(dst, buf[sha256.Size+off:])
		m.stats.diskReads.Add(1)
		return true, nil
	}
	if _, err := f.ReadAt(dst, sha256.Size+off); err != nil && !(errors.Is(err, io.EOF) && sha256.Size+off+int64(len(dst)) == size) {
		return false, fmt.Errorf("read inflated span %d: %w", id, err)
	}
	m.stats.diskReads.Add(1)
	return true, nil
}

// storeInflated commits span id's inflated bytes to disk, behind their
// sha256.
func (m *Manager) storeInflated(id int, data []byte) error {
	w, err := m.o.Cache.Create(m.uncKey(id))
	if err != nil {
		return err
	}
	sum := sha256.Sum256(data)
	if _, err := w.Write(sum[:]); err != nil {
		w.Abort()
		return err
	}
	if _, err := w.Write(data); err != nil {
		w.Abort()
		return err
	}
	if err := w.Commit(); err != nil {
		return err
	}
	m.mu.Lock()
	m.spans[id].uncChecked = true
	m.mu.Unlock()
	return nil
}

// startInflation returns the inflation of span id, starting it (fetched ->
// inflated) unless one is in flight; nil after Close.
func (m *Manager) startInflation(id int) *inflation {
	m.mu.Lock()
	defer m.mu.Unlock()
	sp := &m.spans[id]
	if sp.inf != nil {
		return sp.inf
	}
	if m.closed {
		return nil
	}
	inf := &inflation{done: make(chan struct{})}
	if sp.unc != nil { // landed meanwhile
		inf.data = sp.unc
		close(inf.done)
		return inf
	}
	sp.inf = inf
	m.wg.Add(1)
	go m.inflate(id, inf)
	return inf
}

// inflate gets span id's compressed bytes (fetching them at Demand priority
// if they are gone), inflates them, lands the inflation and commits the
// inflated bytes to disk. It runs on the Manager's goroutine and context:
// no reader's interrupt can fail it for the others.
func (m *Manager) inflate(id int, inf *inflation) {
	defer m.wg.Done()
	var data []byte
	err := func() (err error) {
		defer recoverTo(&err)
		comp, err := m.compressed(m.ctx, id, Demand)
		if err != nil {
			return err
		}
		u0, u1 := m.o.Layout.UncompressedRange(id)
		data, err = m.o.Layout.Inflate(id, comp, make([]byte, u1-u0))
		if errors.Is(err, ErrSpanCorrupt) {
			// Bytes that passed Verify but are not the span: a transfer
			// problem, a damaged cache entry or a mirror's bad copy. Once
			// more from the registry; twice is the layer's fault.
			m.stats.corrupt.Add(1)
			m.o.Log.WithError(err).WithField("span", id).Warn("Span does not inflate to what the index says; fetching it again")
			if comp, err = m.fetchAgain(id); err != nil {
				return fmt.Errorf("inflate span %d: %w", id, err)
			}
			data, err = m.o.Layout.Inflate(id, comp, make([]byte, u1-u0))
			if errors.Is(err, ErrSpanCorrupt) {
				reason := fmt.Sprintf("span %d from the registry does not inflate to what the index says twice", id)
				m.markBadAsync(reason)
				return fmt.Errorf("%w: %s: %w", ErrLayerBad, reason, err)
			}
		}
		if err == nil && int64(len(data)) != u1-u0 {
			err = fmt.Errorf("span %d inflated to %d bytes, want %d", id, len(data), u1-u0)
		}
		if err != nil {
			return fmt.Errorf("inflate span %d: %w", id, err)
		}
		return nil
	}()
	m.mu.Lock()
	sp := &m.spans[id]
	if sp.inf != inf {
		panic(fmt.Sprintf("spans: inflation of span %d landed by another", id))
	}
	sp.inf = nil
	if err == nil {
		sp.unc = data
	}
	m.mu.Unlock()
	if err == nil {
		m.stats.inflations.Add(1)
	}
	inf.data, inf.err = data, err
	close(inf.done)
	if err != nil {
		return
	}
	if m.bad.Load() == nil {
		if perr := m.storeInflated(id, data); perr != nil && !errors.Is(perr, diskcache.ErrFull) {
			m.o.Log.WithError(perr).WithField("span", id).Warn("Could not cache inflated span")
		}
		m.dropIfBad(m.uncKey(id))
	}
	m.mu.Lock()
	if sameBytes(sp.unc, data) {
		sp.unc = nil
	}
	m.mu.Unlock()
}

// compressed returns span id's verified compressed bytes: from memory, from
// disk (verified again; a damaged entry is dropped), or fetched at priority
// p.
func (m *Manager) compressed(ctx context.Context, id int, p Priority) ([]byte, error) {
	for attempt := 0; attempt < maxAttempts; attempt++ {
		if err := m.badErr(); err != nil {
			return nil, err
		}
		m.mu.Lock()
		sp := &m.spans[id]
		if data := sp.comp; data != nil {
			m.mu.Unlock()
			return data, nil
		}
		j := sp.job
		m.mu.Unlock()
		if j != nil {
			select {
			case <-j.done:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			if err := j.err(id); err == nil {
				return j.data[id-j.first], nil
			} else if !errors.Is(err, ErrPreempted) {
				return nil, err
			}
			continue
		}
		data, err := m.o.Cache.ReadFile(m.compKey(id))
		if err == nil {
			if verr := m.o.Layout.Verify(id, data); verr == nil {
				return data, nil
			}
			m.stats.badCached.Add(1)
			m.o.Log.WithField("span", id).Warn("Dropping corrupt span from the cache")
			_ = m.o.Cache.Remove(m.compKey(id))
		} else if !errors.Is(err, diskcache.ErrNotFound) {
			m.o.Log.WithError(err).WithField("span", id).Warn("Span cache read failed")
		}
		// Missing (or only inflated, which does not give the compressed
		// bytes back): fetch it.
		if err := m.claimCompressed(id, p); err != nil {
			return nil, err
		}
	}
	return nil, fmt.Errorf("span %d: %w", id, errEvicted)
}

// claimCompressed starts a fetch of span id unless one is in flight or its
// compressed bytes are here (the caller looks again).
func (m *Manager) claimCompressed(id int, p Priority) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return fmt.Errorf("spans: %w", context.Canceled)
	}
	sp := &m.spans[id]
	switch {
	case sp.job != nil:
		sp.job.ticket.Raise(p)
	case sp.comp == nil && !m.o.Cache.Has(m.compKey(id)):
		// Missing, or inflated only (which does not give the compressed
		// bytes back): fetch it.
		m.newJobLocked([]run{{id, id}}, p)
	}
	return nil
}

// Compressed returns the verified compressed bytes of spans first..last
// (fetching the missing ones at priority p, in one request per run), e.g.
// for the file `blob` or whole-layer verification.
func (m *Manager) Compressed(ctx context.Context, first, last int, p Priority) ([][]byte, error) {
	if err := m.badErr(); err != nil {
		return nil, err
	}
	if first < 0 || last >= m.n || first > last {
		return nil, fmt.Errorf("spans %d-%d out of range (%d spans)", first, last, m.n)
	}
	if err := m.ensure(ctx, first, last, p); err != nil {
		return nil, err
	}
	out := make([][]byte, 0, last-first+1)
	for id := first; id <= last; id++ {
		data, err := m.compressed(ctx, id, p)
		if err != nil {
			return nil, err
		}
		out = append(out, data)
	}
	return out, nil
}

// fetchAgain drops span id's compressed bytes (memory and disk) and fetches
// them afresh at Demand priority, leaving out a mirror that served the last
// read; it returns the new bytes (which passed Verify), never the cached
// ones.
func (m *Manager) fetchAgain(id int) ([]byte, error) {
	// Bytes still being written to disk by the job that fetched them are
	// waited for, so that they cannot land after the good ones.
	m.mu.Lock()
	landed := m.spans[id].landed
	m.mu.Unlock()
	if landed != nil {
		select {
		case <-landed.committed:
		case <-m.ctx.Done():
			return nil, m.ctx.Err()
		}
	}
	_ = m.o.Cache.Remove(m.compKey(id))
	for _, src := range m.o.Sources() {
		if r, ok := src.(interface{ RejectLastRead() }); ok {
			r.RejectLastRead()
		}
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil, fmt.Errorf("spans: %w", context.Canceled)
	}
	sp := &m.spans[id]
	sp.comp = nil
	j := sp.job
	if j == nil {
		j = m.newJobLocked([]run{{id, id}}, Demand)
	}
	m.mu.Unlock()
	select {
	case <-j.done:
	case <-m.ctx.Done():
		return nil, m.ctx.Err()
	}
	if err := j.err(id); err != nil {
		return nil, err
	}
	return j.data[id-j.first], nil
}

// markBadAsync takes the layer out of service and tells OnBad, on a
// goroutine of the Manager.
func (m *Manager) markBadAsync(reason string) {
	if m.MarkBad(reason) && m.o.OnBad != nil {
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			m.o.OnBad(reason)
		}()
	}
}

// Seed stores span id's compressed bytes that the caller read and checked
// already (an index's trailer read when the layer was opened), unless the
// span is here or being fetched. They are verified like fetched bytes; a
// full cache is not an error.
func (m *Manager) Seed(id int, data []byte) error {
	if id < 0 || id >= m.n {
		return fmt.Errorf("span %d out of range (%d spans)", id, m.n)
	}
	if err := m.o.Layout.Verify(id, data); err != nil {
		return fmt.Errorf("seed span %d: %w", id, err)
	}
	m.mu.Lock()
	skip := m.closed || m.spans[id].job != nil || m.presentLocked(id)
	m.mu.Unlock()
	if skip {
		return nil
	}
	if err := m.o.Cache.Put(m.compKey(id), data); err != nil && !errors.Is(err, diskcache.ErrFull) {
		return err
	}
	m.dropIfBad(m.compKey(id))
	return nil
}
