package authbridge

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"

	"github.com/containers/image/v5/docker/reference"
)

// Credential is what a user authenticates with at a registry: a user name and
// password, or an identity token (an OAuth2 refresh token, optionally with the
// user name it belongs to). The zero value means anonymous access.
//
// String, GoString and MarshalJSON never reveal the password or the identity
// token, so a Credential can be logged or printed safely.
type Credential struct {
	// Username is the account name; it is not treated as a secret.
	Username string
	// Password is the account password or an access token used like one.
	Password string
	// IdentityToken is an OAuth2 refresh token; when set it is exchanged with
	// grant_type=refresh_token instead of sending Username/Password.
	IdentityToken string
}

// IsZero reports whether c carries no credential at all (anonymous access).
func (c Credential) IsZero() bool {
	return c == Credential{}
}

// kind names what c carries, without revealing any secret.
func (c Credential) kind() string {
	switch {
	case c.IdentityToken != "":
		return "identity-token"
	case c.Username != "" || c.Password != "":
		return "basic"
	default:
		return "anonymous"
	}
}

// String describes c without its secrets, e.g. `basic(user "alice")`.
func (c Credential) String() string {
	if c.IsZero() {
		return "anonymous"
	}
	return fmt.Sprintf("%s(user %q)", c.kind(), c.Username)
}

// GoString is like String; it keeps %#v from printing the secrets.
func (c Credential) GoString() string {
	return "authbridge.Credential{" + c.String() + "}"
}

// MarshalJSON encodes only the redacted description of c, so that a
// Credential that ends up in a structured log stays safe. Persisting
// credentials uses a separate private encoding.
func (c Credential) MarshalJSON() ([]byte, error) {
	return json.Marshal(c.String())
}

// maxHelperInput bounds what ParseAuthHelperInput reads: c/image writes one
// small object per pulled image.
const maxHelperInput = 1 << 20

// helperEntry is one value of the object containers/image writes to the
// additional-layer-store-auth-helper (docker/docker_image_src.go of
// containers/image >= 5.32). encoding/json matches keys case-insensitively,
// so both "identityToken" (what c/image writes) and "identitytoken" work.
type helperEntry struct {
	Username      string `json:"username"`
	Password      string `json:"password"`
	IdentityToken string `json:"identityToken"`
}

// ParseAuthHelperInput decodes what containers/image writes to the stdin of
// the registries.conf `additional-layer-store-auth-helper`: a JSON object
// keyed by image reference, e.g.
//
//	{"registry.example/app:1.0": {"username": "u", "password": "p", "identityToken": ""}}
//
// Keys are normalized with reference.ParseNormalizedNamed, so they compare
// equal to the reference strings a Transport is created with. An entry with
// no credential (podman pulled anonymously) is returned as the zero
// Credential. Errors wrap ErrInvalidHelperInput and never quote the input.
func ParseAuthHelperInput(r io.Reader) (map[string]Credential, error) {
	raw, err := io.ReadAll(io.LimitReader(r, maxHelperInput+1))
	if err != nil {
		return nil, fmt.Errorf("%w: reading input: %w", ErrInvalidHelperInput, err)
	}
	if len(raw) > maxHelperInput {
		return nil, fmt.Errorf("%w: input larger than %d bytes", ErrInvalidHelperInput, maxHelperInput)
	}
	if len(bytes.TrimSpace(raw)) == 0 {
		return nil, fmt.Errorf("%w: empty input", ErrInvalidHelperInput)
	}
	var entries map[string]*helperEntry
	dec := json.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(&entries); err != nil {
		return nil, fmt.Errorf("%w: %s", ErrInvalidHelperInput, describeJSONError(err))
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: data after the JSON object", ErrInvalidHelperInput)
	}
	if entries == nil {
		return nil, fmt.Errorf("%w: not a JSON object", ErrInvalidHelperInput)
	}
	out := make(map[string]Credential, len(entries))
	for key, e := range entries {
		ref, err := normalizeRef(key)
		if err != nil {
			return nil, fmt.Errorf("%w: key %q: %w", ErrInvalidHelperInput, key, err)
		}
		if e == nil {
			return nil, fmt.Errorf("%w: entry for %q is not an object", ErrInvalidHelperInput, key)
		}
		if _, dup := out[ref]; dup {
			return nil, fmt.Errorf("%w: duplicate entry for %q", ErrInvalidHelperInput, ref)
		}
		out[ref] = Credential(*e)
	}
	return out, nil
}

// describeJSONError summarizes a decoding error without quoting the input,
// which may contain secrets.
func describeJSONError(err error) string {
	var syntax *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syntax):
		return "JSON syntax error at offset " + strconv.FormatInt(syntax.Offset, 10)
	case errors.As(err, &typ):
		field := typ.Field
		if field == "" {
			field = "top level"
		}
		return fmt.Sprintf("JSON %s where %s expects %s (offset %d)", typ.Value, field, typ.Type, typ.Offset)
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return "truncated JSON"
	default:
		return "malformed JSON"
	}
}

// normalizeRef parses s as an image reference and returns its canonical
// string form (docker.io/library/alpine:latest for "alpine:latest").
func normalizeRef(s string) (string, error) {
	ref, err := reference.ParseNormalizedNamed(s)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrInvalidReference, err)
	}
	return ref.String(), nil
}
