package config

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// DefaultPath is where `lazypull serve` looks for its configuration file.
const DefaultPath = "/etc/lazypull/config.toml"

// Example is the documented example configuration shipped in contrib/; it
// states every key with its default value (a test keeps it equal to Default).
//
//go:embed example.toml
var Example []byte

// Duration is a time.Duration written as text in the config ("30s", "15m").
type Duration time.Duration

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(text []byte) error {
	v, err := time.ParseDuration(strings.TrimSpace(string(text)))
	if err != nil {
		return fmt.Errorf("invalid duration %q (want e.g. \"30s\", \"15m\")", text)
	}
	*d = Duration(v)
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// Config is the whole configuration of the lazypull daemon.
type Config struct {
	// RootDir holds all state: span cache, artifact store, credentials handed
	// over by podman, the control socket. Default "/var/lib/lazypull" as root,
	// "$XDG_DATA_HOME/lazypull" (~/.local/share/lazypull) otherwise.
	RootDir string `toml:"root_dir"`
	// MountPoint is where the Additional Layer Store is mounted; podman is
	// configured with additionallayerstores = ["<mount_point>:ref"]. Default
	// "<root_dir>/store" as root, "$XDG_RUNTIME_DIR/lazypull/store" otherwise.
	MountPoint string `toml:"mount_point"`
	// Socket is the control socket used by `lazypull status`, `prune` and
	// `auth-helper`. Default "<root_dir>/lazypull.sock".
	Socket string `toml:"socket"`
	// LogLevel is one of "debug", "info", "warn", "error". Default "info".
	LogLevel string `toml:"log_level"`
	// MetricsAddress, when set (e.g. "127.0.0.1:9641"), serves Prometheus
	// metrics at http://<address>/metrics and Go's profiler under
	// /debug/pprof/ (keep it on loopback). Default "" (off).
	MetricsAddress string `toml:"metrics_address"`

	Registry  RegistryConfig  `toml:"registry"`
	Index     IndexConfig     `toml:"index"`
	Cache     CacheConfig     `toml:"cache"`
	Prefetch  PrefetchConfig  `toml:"prefetch"`
	Artifacts ArtifactsConfig `toml:"artifacts"`
	FUSE      FUSEConfig      `toml:"fuse"`
}

// RegistryConfig controls how registries are reached.
type RegistryConfig struct {
	// Insecure lists registries ("host[:port]") reached without TLS
	// verification, falling back to plain HTTP, in addition to those marked
	// insecure in registries.conf. Default [].
	Insecure []string `toml:"insecure"`
	// RegistriesConf is the registries.conf consulted for insecure registries
	// and credential helpers. Default "" (containers' system default,
	// /etc/containers/registries.conf and registries.conf.d).
	RegistriesConf string `toml:"registries_conf"`
	// AuthFile, when set, is the only credentials file read (podman's
	// --authfile). Default "" (podman's search order).
	AuthFile string `toml:"auth_file"`
	// RequestTimeout bounds one registry request (headers and body). Default "60s".
	RequestTimeout Duration `toml:"request_timeout"`
	// MaxRetries is the number of retries of a failed request (5xx, resets,
	// truncated bodies) with exponential backoff. Default 5.
	MaxRetries int `toml:"max_retries"`
	// ResolveCacheTTL is how long a resolved image (manifest and config) is
	// reused for the lookups of its layers. Default "10s".
	ResolveCacheTTL Duration `toml:"resolve_cache_ttl"`
	// HandoverPersist keeps the credentials podman hands over (the
	// additional-layer-store auth helper) in root_dir/auth/handover.json
	// (mode 0600) for HandoverPersistTTL, so that they survive a restart of
	// the daemon. Default false: memory only; a file left by an earlier
	// version is deleted at start.
	HandoverPersist bool `toml:"handover_persist"`
	// HandoverPersistTTL is how long a handed-over credential stays in that
	// file after podman last handed it over. Default "1h".
	HandoverPersistTTL Duration `toml:"handover_persist_ttl"`
}

// IndexConfig controls which layers get a zTOC and how it is built.
type IndexConfig struct {
	// MinLayerSize is the smallest compressed layer that is served lazily;
	// smaller layers are pulled normally by podman. Default "10MiB" (SOCI's).
	MinLayerSize ByteSize `toml:"min_layer_size"`
	// SpanSize is the number of uncompressed bytes between checkpoints of
	// zTOCs built here. Default "4MiB" (SOCI's).
	SpanSize ByteSize `toml:"span_size"`
	// OnDemand chooses what a lookup does for an image without any index:
	// "sync" builds the index while podman waits (one pass over each layer,
	// spans cached as they stream), "background" answers "not served" at once
	// and indexes for next time, "off" never builds. Default "sync".
	OnDemand string `toml:"on_demand"`
	// Parallel is the number of layers indexed at the same time. Default 4.
	Parallel int `toml:"parallel"`
}

// CacheConfig sizes the on-disk caches under root_dir.
type CacheConfig struct {
	// SpanCacheSize caps the compressed span cache: bytes ("50GiB") or a share
	// of the file system holding root_dir ("20%"). Spans of layers in use are
	// never evicted. Default "20%".
	SpanCacheSize CacheSize `toml:"span_cache_size"`
	// ArtifactCacheSize caps the local artifact store (zTOCs, SOCI indexes).
	// Default "2%".
	ArtifactCacheSize CacheSize `toml:"artifact_cache_size"`
	// MemorySpans is the number of inflated spans kept in memory per daemon,
	// so sequential reads inflate each span once (the kernel's page cache
	// keeps what was read). Default 8.
	MemorySpans int `toml:"memory_spans"`
	// MemoryLimit is a soft limit of the daemon's Go heap: the garbage
	// collector works harder near it, keeping the daemon small on busy
	// machines. "0" means no limit. Default "128MiB".
	MemoryLimit ByteSize `toml:"memory_limit"`
}

// PrefetchConfig controls the background fetch of whole layers.
type PrefetchConfig struct {
	// Enabled starts a background fetch of every span of a layer once it is
	// mounted. Default true.
	Enabled bool `toml:"enabled"`
	// Concurrency is the number of range requests in flight for prefetching,
	// over all layers. Default 4.
	Concurrency int `toml:"concurrency"`
	// BatchSize is the amount of compressed data asked for in one range
	// request. Default "16MiB".
	BatchSize ByteSize `toml:"batch_size"`
	// Bandwidth caps prefetch traffic in bytes per second ("100MiB"); 0 means
	// no cap. Default "0".
	Bandwidth ByteSize `toml:"bandwidth"`
}

// ArtifactsConfig controls where zTOCs and SOCI indexes are kept and shared.
type ArtifactsConfig struct {
	// SharedRepository is an OCI repository ("registry.example.com/lazypull/
	// artifacts") where the fleet shares the indexes it builds; it must be
	// writable with the credentials podman has for it. Default "" (local only).
	SharedRepository string `toml:"shared_repository"`
	// PushToImageRegistry pushes indexes built on demand to the image's own
	// repository as SOCI v1 referrers, when the credentials allow. Default false.
	PushToImageRegistry bool `toml:"push_to_image_registry"`
}

// FUSEConfig tunes the FUSE mount.
type FUSEConfig struct {
	// AllowOther lets other users (podman's processes, the kernel's overlay
	// mounts of rootless users) use the mount; non-root daemons need
	// user_allow_other in /etc/fuse.conf. Default true.
	AllowOther bool `toml:"allow_other"`
	// AttrTimeout is how long the kernel caches attributes and entries of
	// layer files (they never change). Default "1h".
	AttrTimeout Duration `toml:"attr_timeout"`
	// Debug logs every FUSE request. Default false.
	Debug bool `toml:"debug"`
}

// Default returns the configuration used when no file sets a key. The paths
// depend on whether the daemon runs as root (system paths) or not (per user).
func Default() Config { return DefaultFor(os.Geteuid() == 0) }

// DefaultFor returns the defaults for a daemon running as root (system paths)
// or as an unprivileged user (XDG paths).
func DefaultFor(root bool) Config {
	rootDir, mnt := "/var/lib/lazypull", "/var/lib/lazypull/store"
	if !root {
		rootDir, mnt = userDefaults()
	}
	return Config{
		RootDir:    rootDir,
		MountPoint: mnt,
		Socket:     filepath.Join(rootDir, "lazypull.sock"),
		LogLevel:   "info",
		Registry: RegistryConfig{
			Insecure:        []string{},
			RequestTimeout:  Duration(60 * time.Second),
			MaxRetries:      5,
			ResolveCacheTTL: Duration(10 * time.Second),

			HandoverPersistTTL: Duration(time.Hour),
		},
		Index: IndexConfig{
			MinLayerSize: 10 << 20,
			SpanSize:     4 << 20,
			OnDemand:     "sync",
			Parallel:     4,
		},
		Cache: CacheConfig{
			SpanCacheSize:     CacheSize{Percent: 20},
			ArtifactCacheSize: CacheSize{Percent: 2},
			MemorySpans:       8,
			MemoryLimit:       128 << 20,
		},
		Prefetch: PrefetchConfig{
			Enabled:     true,
			Concurrency: 4,
			BatchSize:   16 << 20,
		},
		FUSE: FUSEConfig{
			AllowOther:  true,
			AttrTimeout: Duration(time.Hour),
		},
	}
}

func userDefaults() (root, mnt string) {
	data := os.Getenv("XDG_DATA_HOME")
	if data == "" {
		home, _ := os.UserHomeDir()
		data = filepath.Join(home, ".local", "share")
	}
	root = filepath.Join(data, "lazypull")
	run := os.Getenv("XDG_RUNTIME_DIR")
	if run == "" {
		run = filepath.Join("/run/user", fmt.Sprint(os.Geteuid()))
	}
	return root, filepath.Join(run, "lazypull", "store")
}

// Load reads the configuration file at path over the defaults. A missing file
// at DefaultPath is not an error (the embedded defaults apply); a missing file
// named explicitly is. Unknown keys are errors.
func Load(path string, explicit bool) (Config, error) {
	cfg := Default()
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) && !explicit {
			return cfg, cfg.Validate()
		}
		return cfg, fmt.Errorf("config: %w", err)
	}
	if err := Parse(data, &cfg); err != nil {
		return cfg, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, cfg.Validate()
}

// Parse decodes TOML data over cfg. Keys that cfg does not know are errors.
func Parse(data []byte, cfg *Config) error {
	rootBefore, sockBefore := cfg.RootDir, cfg.Socket
	md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(cfg)
	if err != nil {
		return err
	}
	if und := md.Undecoded(); len(und) > 0 {
		keys := make([]string, len(und))
		for i, k := range und {
			keys[i] = k.String()
		}
		return fmt.Errorf("unknown keys: %s", strings.Join(keys, ", "))
	}
	// The socket follows root_dir unless it was set explicitly.
	if cfg.RootDir != rootBefore && cfg.Socket == sockBefore {
		cfg.Socket = filepath.Join(cfg.RootDir, "lazypull.sock")
	}
	return nil
}

// Validate reports every problem of the configuration at once.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	for name, p := range map[string]string{"root_dir": c.RootDir, "mount_point": c.MountPoint, "socket": c.Socket} {
		if !filepath.IsAbs(p) {
			bad("%s must be an absolute path, got %q", name, p)
		}
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		bad("log_level must be debug, info, warn or error, got %q", c.LogLevel)
	}
	if c.Registry.RequestTimeout <= 0 {
		bad("registry.request_timeout must be positive")
	}
	if c.Registry.MaxRetries < 0 || c.Registry.MaxRetries > 20 {
		bad("registry.max_retries must be within 0..20, got %d", c.Registry.MaxRetries)
	}
	if c.Registry.ResolveCacheTTL < 0 {
		bad("registry.resolve_cache_ttl must not be negative")
	}
	if c.Registry.HandoverPersistTTL <= 0 || c.Registry.HandoverPersistTTL > Duration(24*time.Hour) {
		bad("registry.handover_persist_ttl must be within 1ns..24h, got %s", time.Duration(c.Registry.HandoverPersistTTL))
	}
	if c.Index.SpanSize < 64<<10 || c.Index.SpanSize > 1<<30 {
		bad("index.span_size must be within 64KiB..1GiB, got %s", c.Index.SpanSize)
	}
	switch c.Index.OnDemand {
	case "sync", "background", "off":
	default:
		bad("index.on_demand must be sync, background or off, got %q", c.Index.OnDemand)
	}
	if c.Index.Parallel < 1 || c.Index.Parallel > 64 {
		bad("index.parallel must be within 1..64, got %d", c.Index.Parallel)
	}
	if c.Cache.MemorySpans < 1 || c.Cache.MemorySpans > 4096 {
		bad("cache.memory_spans must be within 1..4096, got %d", c.Cache.MemorySpans)
	}
	if c.Cache.MemoryLimit != 0 && c.Cache.MemoryLimit < ByteSize(c.Cache.MemorySpans)*c.Index.SpanSize*2 {
		bad("cache.memory_limit (%s) must be at least twice memory_spans * span_size, or 0", c.Cache.MemoryLimit)
	}
	if c.Prefetch.Concurrency < 1 || c.Prefetch.Concurrency > 64 {
		bad("prefetch.concurrency must be within 1..64, got %d", c.Prefetch.Concurrency)
	}
	if c.Prefetch.BatchSize < 1<<20 || c.Prefetch.BatchSize > 1<<30 {
		bad("prefetch.batch_size must be within 1MiB..1GiB, got %s", c.Prefetch.BatchSize)
	}
	if c.FUSE.AttrTimeout < 0 {
		bad("fuse.attr_timeout must not be negative")
	}
	return errors.Join(errs...)
}
