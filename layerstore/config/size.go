package config

import (
	"fmt"
	"strconv"
	"strings"
)

// ByteSize is a number of bytes written in the config as text with an optional
// binary or decimal unit: "4194304", "4MiB", "10 GiB", "500MB".
type ByteSize int64

var sizeUnits = []struct {
	suffix string
	mult   int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
	{"B", 1},
}

// ParseByteSize parses s as a ByteSize.
func ParseByteSize(s string) (ByteSize, error) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range sizeUnits {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseFloat(t, 64)
	if err != nil || n < 0 || n*float64(mult) > 1<<62 {
		return 0, fmt.Errorf("invalid size %q (want e.g. \"512MiB\", \"10GB\" or a number of bytes)", s)
	}
	return ByteSize(n * float64(mult)), nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (b *ByteSize) UnmarshalText(text []byte) error {
	v, err := ParseByteSize(string(text))
	if err != nil {
		return err
	}
	*b = v
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (b ByteSize) MarshalText() ([]byte, error) { return []byte(b.String()), nil }

func (b ByteSize) String() string {
	for i := 3; i >= 0; i-- {
		u := sizeUnits[i]
		if b != 0 && int64(b)%u.mult == 0 {
			return strconv.FormatInt(int64(b)/u.mult, 10) + u.suffix
		}
	}
	return strconv.FormatInt(int64(b), 10)
}

// CacheSize is a cache cap: either an absolute size ("20GiB") or a share of
// the size of the file system holding the cache ("10%").
type CacheSize struct {
	Bytes   ByteSize
	Percent float64 // used when > 0
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (c *CacheSize) UnmarshalText(text []byte) error {
	s := strings.TrimSpace(string(text))
	if p, ok := strings.CutSuffix(s, "%"); ok {
		v, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
		if err != nil || v <= 0 || v > 100 {
			return fmt.Errorf("invalid percentage %q (want e.g. \"10%%\")", s)
		}
		*c = CacheSize{Percent: v}
		return nil
	}
	b, err := ParseByteSize(s)
	if err != nil {
		return err
	}
	*c = CacheSize{Bytes: b}
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (c CacheSize) MarshalText() ([]byte, error) { return []byte(c.String()), nil }

func (c CacheSize) String() string {
	if c.Percent > 0 {
		return strconv.FormatFloat(c.Percent, 'f', -1, 64) + "%"
	}
	return c.Bytes.String()
}

// Resolve returns the cap in bytes for a file system of fsSize bytes.
func (c CacheSize) Resolve(fsSize int64) int64 {
	if c.Percent > 0 {
		return int64(float64(fsSize) * c.Percent / 100)
	}
	return int64(c.Bytes)
}
