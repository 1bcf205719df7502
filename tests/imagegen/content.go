package imagegen

import (
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"strconv"
)

// contentKind selects how the bytes of a regular file are made.
type contentKind uint8

const (
	kindText    contentKind = iota // prose and log lines from a fixed vocabulary (compresses ~3-4x)
	kindSource                     // source-code-like lines (compresses ~4x)
	kindJSON                       // JSON records (compresses ~4-5x)
	kindELF                        // ELF-like binary: header, instruction patterns, strings, padding (~2x)
	kindPacked                     // already compressed data: a magic number, then random bytes (~1x)
	kindRandom                     // random bytes (incompressible)
	kindZeros                      // zero bytes
	kindLiteral                    // bytes given with the entry (busybox, small fixed files)
)

// content describes the bytes of a regular file. Generated content depends on
// kind, seed and size only, so it can be reproduced at any time.
type content struct {
	kind contentKind
	seed uint64
	size int64
	data []byte // kindLiteral only
}

// chunkSize is the unit in which generated content is written.
const chunkSize = 64 << 10

// writeTo streams exactly c.size bytes of the content to w.
func (c content) writeTo(w io.Writer) error {
	if c.kind == kindLiteral {
		if int64(len(c.data)) != c.size {
			return fmt.Errorf("imagegen: literal content of %d bytes, size says %d", len(c.data), c.size)
		}
		_, err := w.Write(c.data)
		return err
	}
	if c.kind > kindZeros {
		return fmt.Errorf("imagegen: unknown content kind %d", c.kind)
	}
	g := newGenerator(c.kind, c.seed)
	buf := make([]byte, 0, min(c.size, chunkSize)+4096)
	for left := c.size; left > 0; {
		// The stream does not depend on the chunk sizes: generators append
		// whole units, and only the end of the last chunk is cut off.
		buf = g.fill(buf[:0], int(min(left, chunkSize)))
		n := int64(len(buf))
		if n > left {
			n = left
		}
		if _, err := w.Write(buf[:n]); err != nil {
			return err
		}
		left -= n
	}
	return nil
}

// generator appends about n more bytes of one kind of content to a buffer.
type generator struct {
	kind   contentKind
	rng    *rand.Rand
	chacha *rand.ChaCha8
	indent int    // source: current indentation depth
	offset uint64 // bytes produced so far
}

func newGenerator(kind contentKind, seed uint64) *generator {
	g := &generator{kind: kind, rng: rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))}
	var key [32]byte
	for i := 0; i < 32; i += 8 {
		binary.LittleEndian.PutUint64(key[i:], g.rng.Uint64())
	}
	g.chacha = rand.NewChaCha8(key)
	return g
}

// fill appends at least n bytes (possibly a few more) to buf.
func (g *generator) fill(buf []byte, n int) []byte {
	start := len(buf)
	for len(buf)-start < n {
		switch g.kind {
		case kindText:
			buf = g.textLine(buf)
		case kindSource:
			buf = g.sourceLine(buf)
		case kindJSON:
			buf = g.jsonRecord(buf)
		case kindELF:
			buf = g.elfPiece(buf, n-(len(buf)-start))
		case kindPacked:
			if g.offset == 0 && len(buf) == start {
				buf = append(buf, packedMagic[g.rng.IntN(len(packedMagic))]...)
			}
			if rest := n - (len(buf) - start); rest > 0 {
				buf = g.random(buf, rest)
			}
		case kindRandom:
			buf = g.random(buf, n-(len(buf)-start))
		default: // kindZeros; writeTo rejects unknown kinds
			buf = append(buf, make([]byte, n-(len(buf)-start))...)
		}
	}
	g.offset += uint64(len(buf) - start)
	return buf
}

func (g *generator) random(buf []byte, n int) []byte {
	start := len(buf)
	buf = append(buf, make([]byte, n)...)
	_, _ = g.chacha.Read(buf[start:]) // never fails
	return buf
}

// word returns a word of the vocabulary, low indices much more often than
// high ones (like word frequencies in real text).
func (g *generator) word() string {
	u := g.rng.Float64()
	return vocabulary[int(u*u*u*float64(len(vocabulary)))]
}

// key returns one of the 48 most frequent words (identifiers, JSON keys).
func (g *generator) key() string { return vocabulary[g.rng.IntN(48)] }

func (g *generator) textLine(buf []byte) []byte {
	if g.rng.IntN(3) == 0 { // a log line: timestamp, level, words, a number
		ts := 1700000000 + g.offset/64
		buf = strconv.AppendUint(buf, ts, 10)
		buf = append(buf, logLevels[g.rng.IntN(len(logLevels))]...)
	}
	words := 4 + g.rng.IntN(12)
	for i := range words {
		if i > 0 {
			buf = append(buf, ' ')
		}
		buf = append(buf, g.word()...)
		switch g.rng.IntN(24) {
		case 0:
			buf = append(buf, ',')
		case 1:
			buf = append(buf, '=')
			buf = strconv.AppendInt(buf, int64(g.rng.IntN(100)), 10)
		}
	}
	return append(buf, ".\n"...)
}

func (g *generator) sourceLine(buf []byte) []byte {
	switch d := g.rng.IntN(8); {
	case d == 0 && g.indent < 6:
		g.indent++
	case d == 1 && g.indent > 0:
		g.indent--
		buf = appendIndent(buf, g.indent)
		return append(buf, "}\n"...)
	}
	buf = appendIndent(buf, g.indent)
	tpl := sourceTemplates[g.rng.IntN(len(sourceTemplates))]
	for i := 0; i < len(tpl); i++ {
		switch tpl[i] {
		case '@':
			if g.rng.IntN(3) == 0 {
				buf = append(buf, g.word()...)
			} else {
				buf = append(buf, g.key()...)
			}
		case '#':
			buf = strconv.AppendInt(buf, int64(g.rng.IntN(64)), 10)
		default:
			buf = append(buf, tpl[i])
		}
	}
	return append(buf, '\n')
}

func appendIndent(buf []byte, n int) []byte {
	for range n {
		buf = append(buf, '\t')
	}
	return buf
}

func (g *generator) jsonRecord(buf []byte) []byte {
	buf = append(buf, `{"id": `...)
	buf = strconv.AppendUint(buf, g.offset, 10)
	fields := 2 + g.rng.IntN(6)
	for range fields {
		buf = append(buf, `, "`...)
		buf = append(buf, g.key()...)
		buf = append(buf, `": `...)
		switch g.rng.IntN(4) {
		case 0:
			buf = strconv.AppendInt(buf, int64(g.rng.IntN(1000)), 10)
		case 1:
			buf = strconv.AppendBool(buf, g.rng.IntN(2) == 0)
		case 2:
			buf = append(buf, `["`...)
			buf = append(buf, g.word()...)
			buf = append(buf, `", "`...)
			buf = append(buf, g.word()...)
			buf = append(buf, `"]`...)
		default:
			buf = append(buf, '"')
			buf = append(buf, g.word()...)
			buf = append(buf, ' ')
			buf = append(buf, g.word()...)
			buf = append(buf, '"')
		}
	}
	return append(buf, "}\n"...)
}

// elfPiece appends an ELF-like header at the start of the file, then
// alternating runs of instruction-like patterns, string tables and padding.
func (g *generator) elfPiece(buf []byte, want int) []byte {
	if g.offset == 0 && want > 0 && len(buf) == 0 {
		return append(buf, elfHeader[:]...)
	}
	switch r := g.rng.IntN(16); {
	case r < 11: // code: instruction templates with random immediates
		for range 64 {
			ins := instructions[g.rng.IntN(len(instructions))]
			buf = append(buf, ins.op...)
			if ins.imm == 0 {
				continue
			}
			// Immediates and displacements: mostly small, often repeated.
			v := elfImmediates[g.rng.IntN(len(elfImmediates))]
			if g.rng.IntN(4) == 0 {
				v = g.rng.Uint32() & 0xffff
			}
			for i := range ins.imm {
				buf = append(buf, byte(v>>(8*i)))
			}
		}
	case r < 15: // string table
		for range 16 {
			buf = append(buf, g.word()...)
			buf = append(buf, '_')
			buf = append(buf, g.word()...)
			buf = append(buf, 0)
		}
	default: // alignment padding
		buf = append(buf, make([]byte, 16*(1+g.rng.IntN(32)))...)
	}
	return buf
}

var elfImmediates = []uint32{0, 1, 2, 4, 8, 0x10, 0x18, 0x20, 0x28, 0x30, 0x38, 0x40, 0xfffffff8, 0xfffffff0,
	0xffffffe8, 0x1000, 0x2e8c, 0x40e2, 0x11a0, 0x3c, 0x7c, 0xff}

var logLevels = []string{" INFO ", " DEBUG ", " WARN ", " ERROR "}

var packedMagic = [][]byte{
	{0x1f, 0x8b, 0x08, 0x00},                           // gzip
	{0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'},      // PNG
	{'P', 'K', 0x03, 0x04},                             // zip / jar
	{0x28, 0xb5, 0x2f, 0xfd},                           // zstd
	{0xff, 0xd8, 0xff, 0xe0, 0x00, 0x10, 'J', 'F'},     // JPEG
	{0xfd, '7', 'z', 'X', 'Z', 0x00, 0x00, 0x04, 0xe6}, // xz
}

var sourceTemplates = []string{
	"func @_@(@ int, @ string) (@, error) {",
	"if err := @.@(ctx, @); err != nil {",
	"return nil, fmt.Errorf(\"@ @: %w\", err)",
	"@ := make([]@, 0, #)",
	"for i := 0; i < #; i++ {",
	"// @ @ @ the @ of @ before @.",
	"@.@ = append(@.@, @)",
	"case @@:",
	"var @ = @{@: #, @: \"@\"}",
	"#include <@/@.h>",
	"static int @_@(struct @ *@, size_t #);",
	"def @(self, @, @=#):",
	"x = @[#] + @(@)",
	"import \"@/@\"",
	"type @ struct {",
	"@ @ `json:\"@\"`",
}

type instruction struct {
	op  []byte
	imm int // random bytes after the opcode
}

// instructions are x86-64-like byte patterns; fixed so that they repeat
// across files like real machine code does.
var instructions = []instruction{
	{[]byte{0x55}, 0}, {[]byte{0x48, 0x89, 0xe5}, 0}, {[]byte{0x48, 0x83, 0xec}, 1},
	{[]byte{0xe8}, 4}, {[]byte{0x48, 0x8b, 0x45}, 1}, {[]byte{0x48, 0x89, 0x45}, 1},
	{[]byte{0x8b, 0x45}, 1}, {[]byte{0x89, 0x45}, 1}, {[]byte{0xc3}, 0},
	{[]byte{0x0f, 0x1f, 0x44, 0x00, 0x00}, 0}, {[]byte{0x48, 0x8d, 0x3d}, 4}, {[]byte{0x74}, 1},
	{[]byte{0x75}, 1}, {[]byte{0xeb}, 1}, {[]byte{0x0f, 0x84}, 4}, {[]byte{0x31, 0xc0}, 0},
	{[]byte{0x48, 0x85, 0xc0}, 0}, {[]byte{0x5d}, 0}, {[]byte{0x41, 0x57}, 0}, {[]byte{0x41, 0x56}, 0},
	{[]byte{0x48, 0x8b, 0x05}, 4}, {[]byte{0xff, 0x15}, 4}, {[]byte{0x66, 0x90}, 0}, {[]byte{0xb8}, 4},
}

var elfHeader = func() [64]byte {
	var h [64]byte
	copy(h[:], []byte{0x7f, 'E', 'L', 'F', 2, 1, 1, 0})
	binary.LittleEndian.PutUint16(h[16:], 3)    // ET_DYN
	binary.LittleEndian.PutUint16(h[18:], 0x3e) // x86-64
	binary.LittleEndian.PutUint32(h[20:], 1)
	binary.LittleEndian.PutUint64(h[24:], 0x1040)
	binary.LittleEndian.PutUint64(h[32:], 64)
	binary.LittleEndian.PutUint16(h[52:], 64)
	binary.LittleEndian.PutUint16(h[54:], 56)
	binary.LittleEndian.PutUint16(h[58:], 64)
	return h
}()

// vocabulary is a fixed list of pronounceable pseudo-words, the same for
// every image (built from a constant seed).
var vocabulary = func() []string {
	const consonants, vowels = "bcdfghjklmnprstvwz", "aeiou"
	rng := rand.New(rand.NewPCG(1, 2))
	seen := make(map[string]bool)
	var words []string
	for len(words) < 2048 {
		syllables := 1 + rng.IntN(3)
		var w []byte
		for range syllables {
			w = append(w, consonants[rng.IntN(len(consonants))], vowels[rng.IntN(len(vowels))])
			if rng.IntN(3) == 0 {
				w = append(w, consonants[rng.IntN(len(consonants))])
			}
		}
		if !seen[string(w)] {
			seen[string(w)] = true
			words = append(words, string(w))
		}
	}
	return words
}()
