package authtest

import (
	"bytes"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
)

// BlobRegistry is a minimal read-only registry upstream: GET /v2/ answers
// 200, GET/HEAD /v2/<name>/blobs/<digest> serves stored blobs through
// http.ServeContent (single ranges answer 206, several ranges 206
// multipart/byteranges), everything else 404. It does no authentication;
// put an AuthProxy in front of it.
type BlobRegistry struct {
	mu    sync.Mutex
	blobs map[string][]byte // "<name>@<digest>" -> content

	requests atomic.Uint64
}

var _ http.Handler = (*BlobRegistry)(nil)

// NewBlobRegistry returns an empty BlobRegistry.
func NewBlobRegistry() *BlobRegistry {
	return &BlobRegistry{blobs: map[string][]byte{}}
}

// Put stores data as a blob of repository name and returns its digest.
func (b *BlobRegistry) Put(name string, data []byte) digest.Digest {
	d := digest.FromBytes(data)
	b.mu.Lock()
	defer b.mu.Unlock()
	b.blobs[name+"@"+d.String()] = data
	return d
}

// Requests returns how many requests reached the registry.
func (b *BlobRegistry) Requests() uint64 { return b.requests.Load() }

// ServeHTTP implements the registry subset described on BlobRegistry.
func (b *BlobRegistry) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b.requests.Add(1)
	if r.URL.Path == "/v2/" {
		w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
		_, _ = w.Write([]byte("{}"))
		return
	}
	m := repoPath.FindStringSubmatch(r.URL.Path)
	if m == nil || m[2] != "blobs" || (r.Method != http.MethodGet && r.Method != http.MethodHead) {
		registryError(w, http.StatusNotFound, "NAME_UNKNOWN", "not found")
		return
	}
	b.mu.Lock()
	data, ok := b.blobs[m[1]+"@"+m[3]]
	b.mu.Unlock()
	if !ok {
		registryError(w, http.StatusNotFound, "BLOB_UNKNOWN", "blob unknown")
		return
	}
	w.Header().Set("Docker-Content-Digest", m[3])
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Etag", `"`+m[3]+`"`)
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(data))
}
