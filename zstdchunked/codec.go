package zstdchunked

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/klauspost/compress/zstd"

	"github.com/lazypull/lazypull/tocindex"
)

// MaxWindow bounds the window a frame may ask for (and so the memory a
// decoder allocates for it). containers/storage writes frames with windows
// of a few MiB.
const MaxWindow = 64 << 20

// Codec decompresses the regions of a zstd:chunked blob: runs of whole
// zstd frames, skippable frames included.
type Codec struct{}

var _ tocindex.Codec = Codec{}

// Name implements tocindex.Codec.
func (Codec) Name() string { return "zstd" }

// CheckRegion implements tocindex.Codec: b must be a whole number of frames
// (walked without decompressing).
func (Codec) CheckRegion(b []byte) error {
	_, err := CheckFrames(b)
	return err
}

var (
	allDecoderOnce sync.Once
	allDecoder     *zstd.Decoder
	allDecoderErr  error
)

// decodeAll is the shared stateless decoder: DecodeAll output limited to
// the destination's capacity.
func decodeAll() (*zstd.Decoder, error) {
	allDecoderOnce.Do(func() {
		allDecoder, allDecoderErr = zstd.NewReader(nil,
			zstd.WithDecoderConcurrency(0),
			zstd.WithDecodeAllCapLimit(true),
			zstd.WithDecoderMaxWindow(MaxWindow))
	})
	return allDecoder, allDecoderErr
}

// DecodePrefix implements tocindex.Codec.
func (c Codec) DecodePrefix(b, dst []byte) error {
	d, err := decodeAll()
	if err != nil {
		return err
	}
	out, err := d.DecodeAll(b, dst[:0:len(dst)])
	if err == nil {
		if len(out) != len(dst) {
			return fmt.Errorf("the region decompresses to %d bytes, %d are needed", len(out), len(dst))
		}
		if &out[0] != &dst[0] && len(dst) > 0 {
			copy(dst, out)
		}
		return nil
	}
	if !errors.Is(err, zstd.ErrDecoderSizeExceeded) {
		return err
	}
	// More follows the prefix: stream just the prefix.
	r := getStream()
	defer putStream(r)
	if err := r.Reset(bytes.NewReader(b)); err != nil {
		return err
	}
	_, err = io.ReadFull(r, dst)
	return err
}

// DecodeAll implements tocindex.Codec: b must be whole frames.
func (c Codec) DecodeAll(b []byte, w io.Writer) error {
	if _, err := CheckFrames(b); err != nil {
		return err
	}
	r := getStream()
	defer putStream(r)
	if err := r.Reset(bytes.NewReader(b)); err != nil {
		return err
	}
	_, err := r.WriteTo(w)
	return err
}

var streams sync.Pool

func getStream() *zstd.Decoder {
	if d, ok := streams.Get().(*zstd.Decoder); ok {
		return d
	}
	d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(MaxWindow), zstd.WithDecoderLowmem(true))
	if err != nil {
		panic(fmt.Sprintf("zstdchunked: zstd decoder: %v", err)) // only for invalid options
	}
	return d
}

func putStream(d *zstd.Decoder) {
	_ = d.Reset(nil)
	streams.Put(d)
}
