package ztoc

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Bounds-checked flatbuffer access, shared by the zTOC decoder (flatbuf.go)
// and ParseTarZinfo above.

// wire is a flatbuffer being decoded. In memory it is head (bytes [0,
// len(head))) and tail (bytes [tailOff, size)); the bytes between them are
// a hole (Decode's checkpoint blob) that no access may touch. With r set
// and no head/tail, every access is a small ReadAt.
type wire struct {
	head, tail []byte
	holeStart  uint64
	tailOff    uint64
	size       uint64
	r          io.ReaderAt
}

var errOutOfRange = errors.New("offset out of range")

// maxProbeRead bounds one ReadAt of a probing wire.
const maxProbeRead = 1 << 16

// bytes returns the n bytes at pos.
func (w *wire) bytes(pos, n uint64) ([]byte, error) {
	if pos > w.size || n > w.size-pos {
		return nil, malformed("%v (%d+%d of %d)", errOutOfRange, pos, n, w.size)
	}
	if w.r != nil {
		if n > maxProbeRead {
			return nil, malformed("read of %d bytes while locating the checkpoints", n)
		}
		p := make([]byte, n)
		if err := readFull(w.r, p, int64(pos)); err != nil {
			return nil, err
		}
		return p, nil
	}
	if end := pos + n; end <= uint64(len(w.head)) {
		return w.head[pos:end:end], nil
	}
	if pos >= w.tailOff {
		return w.tail[pos-w.tailOff : pos-w.tailOff+n : pos-w.tailOff+n], nil
	}
	return nil, malformed("object at %d+%d overlaps the checkpoint data", pos, n)
}

func (w *wire) u32(pos uint64) (uint32, error) {
	b, err := w.bytes(pos, 4)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(b), nil
}

// follow reads the uoffset at pos and returns the position it points to.
func (w *wire) follow(pos uint64) (uint64, error) {
	off, err := w.u32(pos)
	if err != nil {
		return 0, err
	}
	return pos + uint64(off), nil
}

// table is a decoded table header: its position and its vtable.
type table struct {
	pos     uint64
	objSize uint64
	vtable  []byte // field offsets, 2 bytes each
}

func (w *wire) root() (table, error) {
	return w.tableAt(0)
}

// tableAt follows the uoffset at ref to a table and checks its vtable.
func (w *wire) tableAt(ref uint64) (table, error) {
	pos, err := w.follow(ref)
	if err != nil {
		return table{}, err
	}
	soff, err := w.u32(pos)
	if err != nil {
		return table{}, err
	}
	vt := int64(pos) - int64(int32(soff))
	if vt < 0 || uint64(vt) > w.size {
		return table{}, malformed("vtable %s", errOutOfRange)
	}
	hdr, err := w.bytes(uint64(vt), 4)
	if err != nil {
		return table{}, fmt.Errorf("vtable: %w", err)
	}
	vtSize := uint64(binary.LittleEndian.Uint16(hdr))
	objSize := uint64(binary.LittleEndian.Uint16(hdr[2:]))
	if vtSize < 4 || vtSize%2 != 0 {
		return table{}, malformed("vtable size %d invalid", vtSize)
	}
	if objSize < 4 || objSize > w.size-pos {
		return table{}, malformed("table size %d out of range", objSize)
	}
	if _, err := w.bytes(pos, objSize); err != nil {
		return table{}, fmt.Errorf("table: %w", err)
	}
	fields, err := w.bytes(uint64(vt)+4, vtSize-4)
	if err != nil {
		return table{}, fmt.Errorf("vtable: %w", err)
	}
	return table{pos: pos, objSize: objSize, vtable: fields}, nil
}

// field returns the position of a field of the given size, or ok=false
// when the field is absent (its default applies).
func (w *wire) field(t table, slot int, size uint64) (pos uint64, ok bool, err error) {
	if 2*slot+2 > len(t.vtable) {
		return 0, false, nil
	}
	fo := uint64(binary.LittleEndian.Uint16(t.vtable[2*slot:]))
	if fo == 0 {
		return 0, false, nil
	}
	if fo < 4 || fo+size > t.objSize {
		return 0, false, malformed("field offset %d outside the %d-byte table", fo, t.objSize)
	}
	return t.pos + fo, true, nil
}

func (w *wire) scalar(t table, slot int, size uint64) ([]byte, error) {
	pos, ok, err := w.field(t, slot, size)
	if err != nil || !ok {
		return nil, err
	}
	return w.bytes(pos, size)
}

func (w *wire) int64Field(t table, slot int) (int64, error) {
	b, err := w.scalar(t, slot, 8)
	if err != nil || b == nil {
		return 0, err
	}
	return int64(binary.LittleEndian.Uint64(b)), nil
}

func (w *wire) uint32Field(t table, slot int) (uint32, error) {
	b, err := w.scalar(t, slot, 4)
	if err != nil || b == nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(b), nil
}

func (w *wire) uint8Field(t table, slot int, def uint8) (uint8, error) {
	b, err := w.scalar(t, slot, 1)
	if err != nil || b == nil {
		return def, err
	}
	return b[0], nil
}

// refField follows a reference field (string, vector or table).
func (w *wire) refField(t table, slot int) (uint64, bool, error) {
	pos, ok, err := w.field(t, slot, 4)
	if err != nil || !ok {
		return 0, false, err
	}
	target, err := w.follow(pos)
	return target, err == nil, err
}

func (w *wire) tableField(t table, slot int) (table, bool, error) {
	pos, ok, err := w.field(t, slot, 4)
	if err != nil || !ok {
		return table{}, false, err
	}
	tt, err := w.tableAt(pos)
	return tt, err == nil, err
}

// byteVectorField returns the contents' position and length of a [ubyte]
// field without touching the contents.
func (w *wire) byteVectorField(t table, slot int) (pos, n uint64, ok bool, err error) {
	vec, ok, err := w.refField(t, slot)
	if err != nil || !ok {
		return 0, 0, false, err
	}
	n32, err := w.u32(vec)
	if err != nil {
		return 0, 0, false, err
	}
	n = uint64(n32)
	if vec+4 > w.size || n > w.size-vec-4 {
		return 0, 0, false, malformed("byte vector of %d bytes %s", n, errOutOfRange)
	}
	return vec + 4, n, true, nil
}
