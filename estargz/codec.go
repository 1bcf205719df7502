package estargz

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/klauspost/compress/gzip"

	"github.com/lazypull/lazypull/tocindex"
)

// Codec decompresses the regions of an eStargz blob: runs of whole gzip
// members.
type Codec struct{}

var _ tocindex.Codec = Codec{}

// Name implements tocindex.Codec.
func (Codec) Name() string { return "gzip" }

// CheckRegion implements tocindex.Codec: a region starts with a gzip
// member header (deflate blocks cannot be walked without inflating them;
// Inflate checks the chunks' digests).
func (Codec) CheckRegion(b []byte) error {
	if len(b) < 18 || b[0] != 0x1f || b[1] != 0x8b || b[2] != 8 || b[3]&0xe0 != 0 {
		return errors.New("not a gzip member")
	}
	return nil
}

// DecodePrefix implements tocindex.Codec.
func (Codec) DecodePrefix(b, dst []byte) error {
	zr, err := newGzipReader(bytes.NewReader(b))
	if err != nil {
		return err
	}
	defer putGzipReader(zr)
	_, err = io.ReadFull(zr, dst)
	return err
}

// DecodeAll implements tocindex.Codec: every byte of b must belong to a
// whole gzip member.
func (Codec) DecodeAll(b []byte, w io.Writer) error {
	br := bytes.NewReader(b)
	zr, err := newGzipReader(br)
	if err != nil {
		return err
	}
	defer putGzipReader(zr)
	zr.Multistream(true)
	if _, err := io.Copy(w, zr); err != nil {
		return err
	}
	if br.Len() != 0 {
		return fmt.Errorf("%d bytes after the last member", br.Len())
	}
	return nil
}

var gzipReaders sync.Pool

// newGzipReader returns a pooled reader of the member at the start of r.
// Reading from a bytes.Reader (an io.ByteReader), the inflater consumes
// exactly the member's bytes.
func newGzipReader(r *bytes.Reader) (*gzip.Reader, error) {
	if zr, ok := gzipReaders.Get().(*gzip.Reader); ok {
		if err := zr.Reset(r); err != nil {
			gzipReaders.Put(zr)
			return nil, err
		}
		return zr, nil
	}
	return gzip.NewReader(r)
}

func putGzipReader(zr *gzip.Reader) {
	zr.Multistream(true)
	gzipReaders.Put(zr)
}
