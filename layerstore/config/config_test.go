package config

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestExampleEqualsDefaults(t *testing.T) {
	var got Config
	if err := Parse(Example, &got); err != nil {
		t.Fatalf("Parse(example.toml) = %v", err)
	}
	if want := DefaultFor(true); !reflect.DeepEqual(got, want) {
		t.Errorf("example.toml = %+v\nwant defaults %+v", got, want)
	}
	if err := got.Validate(); err != nil {
		t.Errorf("Validate(example) = %v", err)
	}
}

func TestParseOverDefaults(t *testing.T) {
	cfg := DefaultFor(true)
	in := `
root_dir = "/srv/lp"
[index]
span_size = "1MiB"
[cache]
span_cache_size = "50GiB"
[registry]
request_timeout = "5s"
`
	if err := Parse([]byte(in), &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Socket != "/srv/lp/lazypull.sock" {
		t.Errorf("Socket = %q, want it to follow root_dir", cfg.Socket)
	}
	if cfg.Index.SpanSize != 1<<20 {
		t.Errorf("SpanSize = %d, want %d", cfg.Index.SpanSize, 1<<20)
	}
	if got := cfg.Cache.SpanCacheSize.Resolve(1 << 40); got != 50<<30 {
		t.Errorf("SpanCacheSize = %d, want %d", got, int64(50<<30))
	}
	if cfg.Registry.RequestTimeout != Duration(5*time.Second) {
		t.Errorf("RequestTimeout = %v", time.Duration(cfg.Registry.RequestTimeout))
	}
	if cfg.Cache.ArtifactCacheSize.Resolve(1000) != 20 {
		t.Errorf("ArtifactCacheSize of 1000 = %d, want 20 (2%%)", cfg.Cache.ArtifactCacheSize.Resolve(1000))
	}
}

func TestParseRejects(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`nonsense = 1`, "unknown keys: nonsense"},
		{"[cache]\nspan_cache_size = \"lots\"", "invalid size"},
		{"[cache]\nspan_cache_size = \"120%\"", "invalid percentage"},
		{"[registry]\nrequest_timeout = \"soon\"", "invalid duration"},
		{"[index]\nonn_demand = \"sync\"", "unknown keys: index.onn_demand"},
	} {
		cfg := DefaultFor(true)
		err := Parse([]byte(tc.in), &cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%q) = %v, want error containing %q", tc.in, err, tc.want)
		}
	}
}

func TestValidateReportsEverything(t *testing.T) {
	cfg := DefaultFor(true)
	cfg.RootDir = "relative"
	cfg.LogLevel = "loud"
	cfg.Index.OnDemand = "maybe"
	cfg.Prefetch.Concurrency = 0
	err := cfg.Validate()
	if err == nil {
		t.Fatal("Validate() = nil, want errors")
	}
	for _, want := range []string{"root_dir must be an absolute path", "log_level", "index.on_demand", "prefetch.concurrency"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v, missing %q", err, want)
		}
	}
}

func TestByteSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want ByteSize
	}{{"4194304", 4 << 20}, {"4MiB", 4 << 20}, {"10 GiB", 10 << 30}, {"500MB", 500e6}, {"1.5KiB", 1536}, {"0", 0}} {
		got, err := ParseByteSize(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseByteSize(%q) = %d, %v, want %d", tc.in, got, err, tc.want)
		}
	}
	for _, in := range []string{"", "-1", "MiB", "3 parsecs"} {
		if _, err := ParseByteSize(in); err == nil {
			t.Errorf("ParseByteSize(%q) = nil error, want error", in)
		}
	}
	if s := ByteSize(4 << 20).String(); s != "4MiB" {
		t.Errorf("String() = %q, want 4MiB", s)
	}
}
