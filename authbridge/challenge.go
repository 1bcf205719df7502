package authbridge

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
)

// Challenge is one authentication challenge from a WWW-Authenticate header
// (RFC 7235), e.g. `Bearer realm="https://auth.example/token",service="reg"`.
type Challenge struct {
	// Scheme is the lower-cased auth scheme ("bearer", "basic", ...).
	Scheme string
	// Params holds the auth parameters with lower-cased names
	// ("realm", "service", "scope", "error").
	Params map[string]string
}

// ParseChallenges parses every challenge in the WWW-Authenticate headers of h.
// Malformed parts are skipped; the result may be empty.
func ParseChallenges(h http.Header) []Challenge {
	var out []Challenge
	for _, v := range h.Values("WWW-Authenticate") {
		out = append(out, parseChallengeList(v)...)
	}
	return out
}

// parseChallengeList parses one header value, which may hold several
// comma-separated challenges, each with comma-separated parameters.
func parseChallengeList(s string) []Challenge {
	var out []Challenge
	p := headerParser{s: s}
	for {
		p.skipSpaceAndCommas()
		if p.done() {
			return out
		}
		scheme := p.token()
		if scheme == "" {
			return out // garbage: stop, keep what was parsed
		}
		c := Challenge{Scheme: strings.ToLower(scheme), Params: map[string]string{}}
		for {
			p.skipSpace()
			save := p.i
			name := p.token()
			p.skipSpace()
			if name == "" || !p.consume('=') {
				// Not a parameter: a token68 (Basic dGVzdA==) or the next
				// challenge's scheme.
				p.i = save
				if name != "" && !p.isNextChallenge() {
					p.token68()
				}
				break
			}
			p.skipSpace()
			var val string
			if p.peek() == '"' {
				val = p.quoted()
			} else {
				val = p.token()
			}
			c.Params[strings.ToLower(name)] = val
			p.skipSpace()
			if !p.consume(',') {
				break
			}
		}
		out = append(out, c)
	}
}

// headerParser is a cursor over a header value.
type headerParser struct {
	s string
	i int
}

func (p *headerParser) done() bool { return p.i >= len(p.s) }

func (p *headerParser) peek() byte {
	if p.done() {
		return 0
	}
	return p.s[p.i]
}

func (p *headerParser) consume(b byte) bool {
	if p.peek() == b && !p.done() {
		p.i++
		return true
	}
	return false
}

func (p *headerParser) skipSpace() {
	for !p.done() && (p.s[p.i] == ' ' || p.s[p.i] == '\t') {
		p.i++
	}
}

func (p *headerParser) skipSpaceAndCommas() {
	for !p.done() && (p.s[p.i] == ' ' || p.s[p.i] == '\t' || p.s[p.i] == ',') {
		p.i++
	}
}

// isTokenChar reports whether b is an RFC 7230 tchar.
func isTokenChar(b byte) bool {
	switch {
	case b >= 'a' && b <= 'z', b >= 'A' && b <= 'Z', b >= '0' && b <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", b) >= 0
}

func (p *headerParser) token() string {
	start := p.i
	for !p.done() && isTokenChar(p.s[p.i]) {
		p.i++
	}
	return p.s[start:p.i]
}

// token68 skips a token68 value (base64 characters and trailing '=').
func (p *headerParser) token68() {
	for !p.done() && (isTokenChar(p.s[p.i]) || p.s[p.i] == '/' || p.s[p.i] == '=') {
		p.i++
	}
}

// isNextChallenge reports whether the cursor is at "scheme <something>", that
// is a token followed by space and not by '='.
func (p *headerParser) isNextChallenge() bool {
	save := p.i
	defer func() { p.i = save }()
	if p.token() == "" {
		return false
	}
	p.skipSpace()
	return !p.consume('=')
}

// quoted reads a quoted-string with backslash escapes.
func (p *headerParser) quoted() string {
	p.i++ // opening quote
	var b strings.Builder
	for !p.done() {
		c := p.s[p.i]
		p.i++
		switch c {
		case '\\':
			if !p.done() {
				b.WriteByte(p.s[p.i])
				p.i++
			}
		case '"':
			return b.String()
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// authScheme is how a registry host wants to be authenticated.
type authScheme int

const (
	schemeUnknown authScheme = iota // no request answered yet
	schemeNone                      // the registry answered without asking for auth
	schemeBasic
	schemeBearer
)

func (s authScheme) String() string {
	switch s {
	case schemeNone:
		return "none"
	case schemeBasic:
		return "basic"
	case schemeBearer:
		return "bearer"
	default:
		return "unknown"
	}
}

// hostAuth is the usable authentication method of a registry host, derived
// from its challenges.
type hostAuth struct {
	scheme  authScheme
	realm   *url.URL // bearer only
	service string   // bearer only
}

// pickChallenge chooses the challenge to answer: Bearer if offered (it is
// what distribution registries use), else Basic.
func pickChallenge(cs []Challenge) (hostAuth, error) {
	var basic bool
	for _, c := range cs {
		switch c.Scheme {
		case "bearer":
			realm := c.Params["realm"]
			u, err := url.Parse(realm)
			if err != nil || realm == "" || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
				return hostAuth{}, fmt.Errorf("%w: bearer realm %q is not an absolute http(s) URL", ErrBadChallenge, realm)
			}
			return hostAuth{scheme: schemeBearer, realm: u, service: c.Params["service"]}, nil
		case "basic":
			basic = true
		}
	}
	if basic {
		return hostAuth{scheme: schemeBasic}, nil
	}
	schemes := make([]string, 0, len(cs))
	for _, c := range cs {
		schemes = append(schemes, c.Scheme)
	}
	return hostAuth{}, fmt.Errorf("%w: offered schemes %v", ErrBadChallenge, schemes)
}
