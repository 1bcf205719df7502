package storagedriver

import (
	"crypto/sha256"
	"encoding/hex"
	"testing"

	digest "github.com/opencontainers/go-digest"
)

func sha(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

func TestLayerID(t *testing.T) {
	diffID := digest.FromString("layer contents")
	blob := digest.FromString("compressed blob")
	parent := sha("some parent")
	tests := []struct {
		name   string
		parent string
		id     LayerIdentity
		want   string
	}{
		{"verified base layer is its DiffID", "", LayerIdentity{DiffID: diffID}, diffID.Encoded()},
		{"verified layer on a parent", parent, LayerIdentity{DiffID: diffID}, sha(parent + "+" + diffID.Encoded())},
		{"TOC base layer is hashed", "", LayerIdentity{TOCDigest: blob}, sha("+@TOC=" + blob.Encoded())},
		{"TOC layer on a parent", parent, LayerIdentity{TOCDigest: blob}, sha(parent + "+@TOC=" + blob.Encoded())},
		{"TOC wins over DiffID", parent, LayerIdentity{DiffID: diffID, TOCDigest: blob}, sha(parent + "+@TOC=" + blob.Encoded())},
	}
	for _, tc := range tests {
		if got := LayerID(tc.parent, tc.id); got != tc.want {
			t.Errorf("%s: LayerID(%q, %+v) = %s, want %s", tc.name, tc.parent, tc.id, got, tc.want)
		}
	}
	// The namespaces never meet: the same digest as DiffID and as TOC.
	if a, b := LayerID(parent, LayerIdentity{DiffID: blob}), LayerID(parent, LayerIdentity{TOCDigest: blob}); a == b {
		t.Errorf("LayerID by DiffID and by TOC of the same digest are both %s", a)
	}
}

func TestImageID(t *testing.T) {
	config := digest.FromString("config")
	a, b := digest.FromString("a"), digest.FromString("b")
	tests := []struct {
		name string
		ids  []LayerIdentity
		want string
	}{
		{"all verified: the config digest", []LayerIdentity{{DiffID: a}, {DiffID: b}}, config.Encoded()},
		{"no layers: the config digest", nil, config.Encoded()},
		{"one TOC layer", []LayerIdentity{{TOCDigest: a}, {DiffID: b}}, sha("@With TOC:" + a.String() + "||@config:" + config.String())},
		{"all TOC layers", []LayerIdentity{{TOCDigest: a}, {TOCDigest: b}}, sha("@With TOC:" + a.String() + "|" + b.String() + "|@config:" + config.String())},
	}
	for _, tc := range tests {
		if got := ImageID(config, tc.ids); got != tc.want {
			t.Errorf("%s: ImageID = %s, want %s", tc.name, got, tc.want)
		}
	}
	// The same TOC layers under another config (a retag with a new CMD):
	// another image, another ID.
	toc := []LayerIdentity{{TOCDigest: a}, {TOCDigest: b}}
	if ImageID(config, toc) == ImageID(digest.FromString("other config"), toc) {
		t.Error("two configs over the same TOC layers share an image ID")
	}
}

func TestTOCRef(t *testing.T) {
	if got, want := TOCRef("127.0.0.1:5000/a/b:v1"), "lazypull-toc:127.0.0.1:5000/a/b:v1"; got != want {
		t.Errorf("TOCRef = %q, want %q", got, want)
	}
}
