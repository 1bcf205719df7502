package compat

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"os"
	"testing"

	sociztoc "github.com/awslabs/soci-snapshotter/ztoc"
	"github.com/awslabs/soci-snapshotter/ztoc/compression"
	digest "github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/ztoc"
)

// spanSizes gives each shape a span size: SOCI's default for most, smaller
// ones where more spans (and more files across span boundaries) or span
// sizes unrelated to the gzip member and pgzip block sizes are wanted.
var spanSizes = map[string]int64{
	"small-files-gzip":   1 << 20,
	"multimember-gzip":   2 << 20,
	"uncompressed":       1 << 20,
	"gnu-padded-tar":     1<<20 + 4096 + 3,
	"stdlib-gzip-fname":  2 << 20,
	"small-members-gzip": 1 << 20,
}

func spanSizeOf(l Layer) int64 {
	if s, ok := spanSizes[l.Name]; ok {
		return s
	}
	return ztoc.DefaultSpanSize
}

// maxSociExtractions bounds the ExtractFile calls per layer: SOCI's
// ExtractFile inflates from the start of the file's first span every time,
// so extracting thousands of small files would take minutes. Every byte is
// still checked through SOCI by extracting every span whole.
const maxSociExtractions = 250

// TestCompat builds each layer shape's zTOC with SOCI (v0.16.1, cgo zlib)
// and with lazypull, then checks both directions: lazypull reads every
// file of SOCI's zTOC and SOCI (Unmarshal, its zinfo and ExtractFile) reads
// lazypull's; the file tables, checkpoints and span digests must be equal.
func TestCompat(t *testing.T) {
	for _, l := range testLayers(t) {
		t.Run(l.Name, func(t *testing.T) {
			t.Parallel()
			span := spanSizeOf(l)
			truth := readTruth(t, l)
			sociZ, sociBytes := sociBuild(t, l, span)
			ours, ourBytes := ourBuild(t, l, span)
			t.Logf("%s: %d bytes, %d uncompressed, %d entries, span %d: SOCI zTOC %d bytes (%d spans), ours %d bytes (%d spans)",
				l.Name, l.Size, len(truth.raw), len(ours.Ztoc.TOC.FileMetadata), span,
				len(sociBytes), sociZ.MaxSpanID+1, len(ourBytes), ours.Ztoc.CompressionInfo.MaxSpanID+1)

			t.Run("header", func(t *testing.T) { checkHeader(t, l, truth, sociZ, ours) })
			t.Run("checkpoints", func(t *testing.T) { checkCheckpoints(t, l, truth, sociZ, ours.Ztoc) })
			t.Run("soci-ztoc/lazypull-reader", func(t *testing.T) { checkOursReadsSOCI(t, l, truth, sociZ, sociBytes, ours.Ztoc) })
			t.Run("soci-ztoc/lazypull-verify", func(t *testing.T) { checkVerifySOCI(t, truth, sociBytes) })
			t.Run("lazypull-ztoc/soci-reader", func(t *testing.T) { checkSOCIReadsOurs(t, l, truth, sociZ, ourBytes, ours.Ztoc) })
		})
	}
}

// checkHeader compares the zTOCs' sizes and what Build reports of the
// layer.
func checkHeader(t *testing.T, l Layer, truth *tarTruth, sociZ *sociztoc.Ztoc, ours *ztoc.BuildResult) {
	z := ours.Ztoc
	if got, want := ours.Digest, digest.FromBytes(truth.blob); got != want {
		t.Errorf("Build digest %s, want %s", got, want)
	}
	if got, want := ours.DiffID, digest.FromBytes(truth.raw); got != want {
		t.Errorf("Build DiffID %s, want %s", got, want)
	}
	if got, want := z.CompressedArchiveSize, int64(sociZ.CompressedArchiveSize); got != want || got != l.Size {
		t.Errorf("compressed archive size %d, SOCI's %d, layer %d", got, want, l.Size)
	}
	// SOCI counts the tar stream up to its end-of-archive marker, we count
	// all of it: the two differ only when zeros follow the marker.
	if got, want := int64(sociZ.UncompressedArchiveSize), truth.endOfArchive; got != want {
		t.Errorf("SOCI's uncompressed archive size %d, want the end-of-archive offset %d", got, want)
	}
	if got, want := z.UncompressedArchiveSize, int64(len(truth.raw)); got != want {
		t.Errorf("uncompressed archive size %d, want the tar stream's %d", got, want)
	}
	if l.Padded == (truth.endOfArchive == int64(len(truth.raw))) {
		t.Errorf("padded %v, but the end-of-archive marker ends at %d of %d", l.Padded, truth.endOfArchive, len(truth.raw))
	}
	wantAlgo := ztoc.Gzip
	if l.Uncompressed {
		wantAlgo = ztoc.Uncompressed
	}
	if z.CompressionInfo.Algorithm != wantAlgo || sociZ.CompressionAlgorithm != wantAlgo.String() {
		t.Errorf("compression %v, SOCI's %q, want %v", z.CompressionInfo.Algorithm, sociZ.CompressionAlgorithm, wantAlgo)
	}
	if err := ztoc.CompareTOC(z.TOC.FileMetadata, fromSOCI(sociZ.TOC.FileMetadata)); err != nil {
		t.Errorf("file table differs from the one SOCI built: %v", err)
	}
}

// checkCheckpoints compares the span geometry: for gzip layers the
// checkpoint blobs (every checkpoint's in, out, bits and 32 KiB window)
// and the span digests must be SOCI's exactly, single- and multi-member
// alike: at a member boundary zlib (SOCI) goes on with the same sliding
// window and so do we, and checkpoints right after a member header are
// placed by the same rule. For uncompressed layers the TarZinfo must be
// SOCI's.
func checkCheckpoints(t *testing.T, l Layer, truth *tarTruth, sociZ *sociztoc.Ztoc, z *ztoc.Ztoc) {
	ci := &z.CompressionInfo
	if got, want := int64(ci.MaxSpanID), int64(sociZ.MaxSpanID); got != want {
		t.Errorf("max span id %d, SOCI's %d", got, want)
	}
	if len(ci.SpanDigests) != len(sociZ.SpanDigests) {
		t.Errorf("%d span digests, SOCI has %d", len(ci.SpanDigests), len(sociZ.SpanDigests))
	}
	for i := range min(len(ci.SpanDigests), len(sociZ.SpanDigests)) {
		if ci.SpanDigests[i] != sociZ.SpanDigests[i] {
			t.Errorf("span %d digest %s, SOCI's %s", i, ci.SpanDigests[i], sociZ.SpanDigests[i])
			break
		}
	}
	if l.Uncompressed {
		ourSpan, ourSize, err := ztoc.ParseTarZinfo(ci.Checkpoints)
		if err != nil {
			t.Fatalf("our TarZinfo: %v", err)
		}
		sociSpan, sociSize, err := ztoc.ParseTarZinfo(sociZ.Checkpoints)
		if err != nil {
			t.Fatalf("SOCI's TarZinfo: %v", err)
		}
		if ourSpan != sociSpan || ourSize != sociSize {
			t.Errorf("TarZinfo span %d size %d, SOCI's span %d size %d", ourSpan, ourSize, sociSpan, sociSize)
		}
		if !bytes.Equal(ci.Checkpoints, sociZ.Checkpoints) {
			t.Errorf("TarZinfo bytes % x, SOCI's % x", ci.Checkpoints, sociZ.Checkpoints)
		}
		return
	}
	ours, err := ztoc.ParseCheckpoints(bytes.NewReader(ci.Checkpoints), int64(len(ci.Checkpoints)))
	if err != nil {
		t.Fatalf("our checkpoints: %v", err)
	}
	theirs, err := ztoc.ParseCheckpoints(bytes.NewReader(sociZ.Checkpoints), int64(len(sociZ.Checkpoints)))
	if err != nil {
		t.Fatalf("SOCI's checkpoints: %v", err)
	}
	if ours.Version != 2 || theirs.Version != 2 || ours.SpanSize != theirs.SpanSize {
		t.Errorf("checkpoint blob version %d span %d, SOCI's version %d span %d", ours.Version, ours.SpanSize, theirs.Version, theirs.SpanSize)
	}
	if len(ours.Points) != len(theirs.Points) {
		t.Errorf("%d checkpoints, SOCI has %d", len(ours.Points), len(theirs.Points))
	}
	if want := (ztoc.Checkpoint{In: gzipHeaderLen(t, truth.blob)}); ours.Points[0] != want {
		t.Errorf("checkpoint 0 %+v, want %+v (just after the gzip header)", ours.Points[0], want)
	}
	if !l.MultiMember && len(truth.members) != 1 {
		t.Fatalf("%d gzip members in a single-member shape", len(truth.members))
	}
	var a, b [ztoc.WindowSize]byte
	bad, atMember := 0, 0
	for i := range min(len(ours.Points), len(theirs.Points)) {
		p, q := ours.Points[i], theirs.Points[i]
		if p != q {
			t.Errorf("checkpoint %d: in %d out %d bits %d, SOCI's in %d out %d bits %d", i, p.In, p.Out, p.Bits, q.In, q.Out, q.Bits)
			if bad++; bad == 5 {
				t.Fatal("too many differences")
			}
			continue
		}
		if _, err := ours.Window(i, a[:]); err != nil {
			t.Fatal(err)
		}
		if _, err := theirs.Window(i, b[:]); err != nil {
			t.Fatal(err)
		}
		if a != b {
			t.Errorf("checkpoint %d (in %d out %d bits %d): window differs from SOCI's", i, p.In, p.Out, p.Bits)
			if bad++; bad == 5 {
				t.Fatal("too many differences")
			}
		}
		// The window is the output before the checkpoint (across member
		// boundaries), zeros in front at the start of the stream.
		n := min(ztoc.WindowSize, p.Out)
		if !bytes.Equal(a[ztoc.WindowSize-n:], truth.raw[p.Out-n:p.Out]) || !bytes.Equal(a[:ztoc.WindowSize-n], make([]byte, ztoc.WindowSize-n)) {
			t.Errorf("checkpoint %d window is not the %d bytes of output before it, zero-padded", i, n)
		}
		if p.Out > 0 && truth.memberStart(p.Out) == p.Out {
			atMember++
		}
	}
	if !bytes.Equal(ci.Checkpoints, sociZ.Checkpoints) && bad == 0 && len(ours.Points) == len(theirs.Points) {
		t.Errorf("checkpoint blobs differ although every checkpoint matches")
	}
	if l.MultiMember {
		t.Logf("%d gzip members; %d of %d checkpoints lie just after a member header", len(truth.members), atMember, len(ours.Points))
	}
}

// checkOursReadsSOCI opens SOCI's serialized zTOC with lazypull and reads
// every regular file (and hard link) and the whole tar stream through it.
func checkOursReadsSOCI(t *testing.T, l Layer, truth *tarTruth, sociZ *sociztoc.Ztoc, sociBytes []byte, ours *ztoc.Ztoc) {
	decoded, err := ztoc.Unmarshal(sociBytes)
	if err != nil {
		t.Fatalf("Unmarshal(SOCI's zTOC): %v", err)
	}
	if decoded.BuildToolIdentifier != sociBuildTool || decoded.Version != ztoc.Version {
		t.Errorf("decoded version %q tool %q", decoded.Version, decoded.BuildToolIdentifier)
	}
	if err := ztoc.CompareTOC(decoded.TOC.FileMetadata, fromSOCI(sociZ.TOC.FileMetadata)); err != nil {
		t.Errorf("SOCI's zTOC decoded by lazypull differs from SOCI's own: %v", err)
	}
	if err := ztoc.CompareTOC(decoded.TOC.FileMetadata, ours.TOC.FileMetadata); err != nil {
		t.Errorf("SOCI's file table differs from ours: %v", err)
	}
	if !bytes.Equal(decoded.CompressionInfo.Checkpoints, sociZ.Checkpoints) {
		t.Errorf("decoded checkpoint blob differs from SOCI's")
	}
	x, err := ztoc.OpenLayerIndex(bytes.NewReader(sociBytes), int64(len(sociBytes)))
	if err != nil {
		t.Fatalf("OpenLayerIndex(SOCI's zTOC): %v", err)
	}
	readEverything(t, x, truth)
}

// checkVerifySOCI checks SOCI's zTOC with lazypull's whole-layer
// verification (every checkpoint, window, span digest and entry against the
// layer) and per-entry header checks: a genuine SOCI zTOC passes both,
// whatever SOCI's checkpoint placement and uncompressed size convention.
func checkVerifySOCI(t *testing.T, truth *tarTruth, sociBytes []byte) {
	x, err := ztoc.OpenLayerIndex(bytes.NewReader(sociBytes), int64(len(sociBytes)))
	if err != nil {
		t.Fatalf("OpenLayerIndex(SOCI's zTOC): %v", err)
	}
	res, err := x.Verify(context.Background(), bytes.NewReader(truth.blob),
		ztoc.VerifyOptions{Digest: digest.FromBytes(truth.blob), DiffID: digest.FromBytes(truth.raw)})
	if err != nil {
		t.Fatalf("Verify(SOCI's zTOC) = %v", err)
	}
	if res.Entries != len(x.Entries()) || res.Size != int64(len(truth.blob)) || res.UncompressedSize != int64(len(truth.raw)) {
		t.Errorf("Verify = %+v; want %d entries, %d bytes, %d uncompressed", res, len(x.Entries()), len(truth.blob), len(truth.raw))
	}
	r := ztoc.NewReader(x, ztoc.ReaderAtSource(x, bytes.NewReader(truth.blob)), nil)
	for i, m := range x.Entries() {
		if err := r.CheckEntry(context.Background(), i); err != nil {
			t.Fatalf("CheckEntry(%q) of SOCI's zTOC = %v", m.Name, err)
		}
	}
}

// readEverything reads every file and the whole stream of x's layer with
// lazypull's Reader and compares them with the tar.
func readEverything(t *testing.T, x *ztoc.LayerIndex, truth *tarTruth) {
	ctx := context.Background()
	r := ztoc.NewReader(x, ztoc.ReaderAtSource(x, bytes.NewReader(truth.blob)), nil)
	files := 0
	for i, m := range x.Entries() {
		if m.Type != ztoc.TypeReg && m.Type != ztoc.TypeHardlink {
			continue
		}
		want, ok := truth.files[m.Name]
		if !ok {
			t.Errorf("%q is not a file of the tar", m.Name)
			continue
		}
		got := make([]byte, len(want)+1)
		n, err := r.ReadFile(ctx, i, got, 0)
		if err != io.EOF {
			t.Errorf("ReadFile(%q) = %d, %v; want %d, EOF", m.Name, n, err, len(want))
		}
		if !bytes.Equal(got[:n], want) {
			t.Errorf("ReadFile(%q): %d bytes differ from the tar's %d", m.Name, n, len(want))
		}
		files++
	}
	if want := len(truth.files); files != want {
		t.Errorf("read %d files, the tar has %d", files, want)
	}
	size := x.Ztoc().UncompressedArchiveSize
	all, err := readAllThrough(ctx, r, size, 1<<20+7)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(all, truth.raw[:size]) {
		t.Errorf("the stream read through the zTOC (%d bytes) differs from the tar's first %d", len(all), size)
	}
}

// checkSOCIReadsOurs unmarshals lazypull's zTOC with SOCI's package and
// extracts through SOCI's zinfo: every span whole (so every byte of the
// stream), and files with ExtractFile.
func checkSOCIReadsOurs(t *testing.T, l Layer, truth *tarTruth, sociBuilt *sociztoc.Ztoc, ourBytes []byte, ours *ztoc.Ztoc) {
	z, err := sociztoc.Unmarshal(bytes.NewReader(ourBytes))
	if err != nil {
		t.Fatalf("SOCI Unmarshal(our zTOC): %v", err)
	}
	if string(z.Version) != ztoc.Version || z.BuildToolIdentifier != ztoc.BuildToolIdentifier {
		t.Errorf("SOCI reads version %q tool %q", z.Version, z.BuildToolIdentifier)
	}
	if int64(z.CompressedArchiveSize) != ours.CompressedArchiveSize || int64(z.UncompressedArchiveSize) != ours.UncompressedArchiveSize {
		t.Errorf("SOCI reads sizes %d/%d, ours are %d/%d", z.CompressedArchiveSize, z.UncompressedArchiveSize,
			ours.CompressedArchiveSize, ours.UncompressedArchiveSize)
	}
	if want := ours.CompressionInfo.Algorithm.String(); z.CompressionAlgorithm != want {
		t.Errorf("SOCI reads compression %q, want %q", z.CompressionAlgorithm, want)
	}
	if int64(z.MaxSpanID) != int64(ours.CompressionInfo.MaxSpanID) || len(z.SpanDigests) != len(ours.CompressionInfo.SpanDigests) {
		t.Fatalf("SOCI reads max span id %d and %d digests, ours are %d and %d", z.MaxSpanID, len(z.SpanDigests),
			ours.CompressionInfo.MaxSpanID, len(ours.CompressionInfo.SpanDigests))
	}
	for i, d := range z.SpanDigests {
		if d != ours.CompressionInfo.SpanDigests[i] {
			t.Errorf("SOCI reads span %d digest %s, ours is %s", i, d, ours.CompressionInfo.SpanDigests[i])
		}
	}
	if !bytes.Equal(z.Checkpoints, ours.CompressionInfo.Checkpoints) {
		t.Errorf("SOCI reads a different checkpoint blob")
	}
	// SOCI derives every entry's tar header offset when it unmarshals; all
	// fields must equal those of the zTOC SOCI built from the layer itself.
	if len(z.TOC.FileMetadata) != len(sociBuilt.TOC.FileMetadata) {
		t.Fatalf("SOCI reads %d entries, its own zTOC has %d", len(z.TOC.FileMetadata), len(sociBuilt.TOC.FileMetadata))
	}
	for i := range z.TOC.FileMetadata {
		if f := sociEntryDiff(&z.TOC.FileMetadata[i], &sociBuilt.TOC.FileMetadata[i]); f != "" {
			t.Errorf("entry %d (%q): SOCI reads %s differently from its own zTOC", i, z.TOC.FileMetadata[i].Name, f)
		}
	}

	// Every span, extracted whole by SOCI's zinfo from exactly the
	// compressed range SOCI computes for it, hashed as SOCI's fetcher would.
	zinfo, err := z.Zinfo()
	if err != nil {
		t.Fatalf("SOCI Zinfo: %v", err)
	}
	defer zinfo.Close()
	size := compression.Offset(len(truth.blob))
	usize := z.UncompressedArchiveSize
	for id := compression.SpanID(0); id <= zinfo.MaxSpanID(); id++ {
		c0, c1 := zinfo.StartCompressedOffset(id), zinfo.EndCompressedOffset(id, size)
		u0, u1 := zinfo.StartUncompressedOffset(id), zinfo.EndUncompressedOffset(id, usize)
		comp := truth.blob[c0:c1]
		if got := digest.Digest("sha256:" + hexSum(comp)); got != z.SpanDigests[id] {
			t.Errorf("span %d [%d, %d): digest %s, the zTOC says %s", id, c0, c1, got, z.SpanDigests[id])
		}
		data, err := zinfo.ExtractDataFromBuffer(comp, u1-u0, u0, id)
		if err != nil {
			t.Fatalf("SOCI ExtractDataFromBuffer(span %d [%d, %d) -> [%d, %d)): %v", id, c0, c1, u0, u1, err)
		}
		if !bytes.Equal(data, truth.raw[u0:u1]) {
			t.Fatalf("span %d [%d, %d) extracted by SOCI differs from the tar stream", id, u0, u1)
		}
	}

	// Files through SOCI's ExtractFile: every hard link, every file that
	// crosses a span boundary, and an even sample of the rest.
	x, err := ztoc.NewLayerIndex(ours, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var pick []int
	var rest []int
	for i, m := range ours.TOC.FileMetadata {
		switch {
		case m.Type == ztoc.TypeHardlink:
			pick = append(pick, i)
		case m.Type != ztoc.TypeReg || m.UncompressedSize == 0:
		case x.SpanOf(m.UncompressedOffset) != x.SpanOf(m.UncompressedOffset+m.UncompressedSize-1):
			pick = append(pick, i)
		default:
			rest = append(rest, i)
		}
	}
	if budget := maxSociExtractions - len(pick); budget > 0 && len(rest) > 0 {
		step := max(1, len(rest)/budget)
		for j := 0; j < len(rest); j += step {
			pick = append(pick, rest[j])
		}
	}
	f, err := os.Open(l.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sr := io.NewSectionReader(f, 0, l.Size)
	for _, i := range pick {
		m := &ours.TOC.FileMetadata[i]
		want := truth.files[m.Name]
		got, err := z.ExtractFile(sr, m.Name)
		if err != nil {
			t.Errorf("SOCI ExtractFile(%q): %v", m.Name, err)
			continue
		}
		if !bytes.Equal(got, want) {
			t.Errorf("SOCI ExtractFile(%q): %d bytes differ from the tar's %d", m.Name, len(got), len(want))
		}
	}
	t.Logf("SOCI extracted %d spans whole and %d of %d files", zinfo.MaxSpanID()+1, len(pick), len(truth.files))
}

func hexSum(b []byte) string {
	s := sha256.Sum256(b)
	return digest.NewDigestFromBytes(digest.SHA256, s[:]).Encoded()
}

// gzipHeaderLen returns the length of the gzip member header at the start
// of blob (RFC 1952 2.3).
func gzipHeaderLen(t *testing.T, blob []byte) int64 {
	t.Helper()
	const fhcrc, fextra, fname, fcomment = 1 << 1, 1 << 2, 1 << 3, 1 << 4
	if len(blob) < 10 || blob[0] != 0x1f || blob[1] != 0x8b {
		t.Fatalf("not a gzip member")
	}
	flg, n := blob[3], 10
	if flg&fextra != 0 {
		n += 2 + (int(blob[n]) | int(blob[n+1])<<8)
	}
	for _, f := range []byte{fname, fcomment} {
		if flg&f != 0 {
			n += bytes.IndexByte(blob[n:], 0) + 1
		}
	}
	if flg&fhcrc != 0 {
		n += 2
	}
	return int64(n)
}
