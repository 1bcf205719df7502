package config

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/containers/storage/pkg/unshare"
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
	// metrics at http://<address>/metrics (keep it on loopback: any local
	// user can reach it). Default "" (off).
	MetricsAddress string `toml:"metrics_address"`
	// Pprof also serves Go's profiler under /debug/pprof/ on
	// metrics_address, for diagnosis: whoever reaches the address can then
	// make the daemon burn CPU and read its goroutine stacks. Default false.
	Pprof bool `toml:"pprof"`

	Registry  RegistryConfig  `toml:"registry"`
	Index     IndexConfig     `toml:"index"`
	Cache     CacheConfig     `toml:"cache"`
	Fetch     FetchConfig     `toml:"fetch"`
	Prefetch  PrefetchConfig  `toml:"prefetch"`
	Verify    VerifyConfig    `toml:"verification"`
	Artifacts ArtifactsConfig `toml:"artifacts"`
	FUSE      FUSEConfig      `toml:"fuse"`
}

// RegistryConfig controls how registries are reached: as podman reaches
// them, through registries.conf (mirrors, location rewrites, blocked and
// insecure registries), certs.d (private CAs, client certificates) and the
// HTTPS_PROXY/HTTP_PROXY/NO_PROXY environment of the daemon.
type RegistryConfig struct {
	// Insecure lists registries ("host[:port]") reached without TLS
	// verification, falling back to plain HTTP, in addition to those marked
	// insecure in registries.conf. Default [].
	Insecure []string `toml:"insecure"`
	// RegistriesConf is the registries.conf (and, beside it,
	// <registries_conf>.d) read for mirrors, location rewrites, blocked and
	// insecure registries and credential helpers. Default "": the one podman
	// reads ($CONTAINERS_REGISTRIES_CONF, else
	// $HOME/.config/containers/registries.conf if it exists, else
	// /etc/containers/registries.conf, with registries.conf.d).
	RegistriesConf string `toml:"registries_conf"`
	// CertsDir holds the TLS settings of registries, <certs_dir>/<host[:port]>/
	// with *.crt CAs and *.cert/*.key client certificates
	// (containers-certs.d(5)). Default "": podman's directories
	// ($HOME/.config/containers/certs.d, /etc/containers/certs.d,
	// /etc/docker/certs.d).
	CertsDir string `toml:"certs_dir"`
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
	// MirrorFirstByteTimeout is how long a registries.conf mirror may take to
	// start answering a blob read: a pull-through cache may fetch the whole
	// blob upstream first. Origins get 30s. Default "10m".
	MirrorFirstByteTimeout Duration `toml:"mirror_first_byte_timeout"`
	// MirrorWarmup is how long a mirror may answer range requests for a blob
	// with the whole blob (HTTP 200), as distribution's pull-through cache
	// does until it has stored the blob; its answers serve the reads
	// meanwhile, and after that the mirror is skipped for the blob. "0s"
	// skips such a mirror at once. Default "1m".
	MirrorWarmup Duration `toml:"mirror_warmup"`
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
	// zTOCs built here: what a read that misses costs at least (SOCI's
	// default is 4MiB; smaller spans fetch less for random reads, and their
	// 32 KiB windows are fetched only with them). Default "1MiB".
	SpanSize ByteSize `toml:"span_size"`
	// OnDemand chooses what a lookup does for an image without any index:
	// "sync" builds the index while podman waits (one pass over each layer,
	// spans cached as they stream), "background" answers "not served" at once
	// and indexes for next time, "off" never builds. Default "sync".
	OnDemand string `toml:"on_demand"`
	// Parallel is the number of layers indexed at the same time. Default 4.
	Parallel int `toml:"parallel"`
	// MaxZtocSize bounds a zTOC read from a registry or the shared store, or
	// built here. Default "512MiB".
	MaxZtocSize ByteSize `toml:"max_ztoc_size"`
	// MaxEntries bounds the tar entries of a layer served lazily. Default
	// 1048576.
	MaxEntries int `toml:"max_entries"`
	// MaxSpanSize bounds a span, compressed and uncompressed (an index
	// declaring larger spans is refused; a layer whose deflate blocks are
	// longer cannot be indexed). Default "64MiB".
	MaxSpanSize ByteSize `toml:"max_span_size"`
}

// CacheConfig sizes the on-disk caches under root_dir.
type CacheConfig struct {
	// SpanCacheSize caps the span cache (spans compressed, and inflated once
	// read): bytes ("50GiB") or a share of the file system holding root_dir
	// ("20%"). Spans of layers in use are never evicted. Default "20%".
	SpanCacheSize CacheSize `toml:"span_cache_size"`
	// ArtifactCacheSize caps the local artifact store (zTOCs, SOCI indexes).
	// Default "2%".
	ArtifactCacheSize CacheSize `toml:"artifact_cache_size"`
	// MemoryLimit is a soft limit of the daemon's Go heap: the garbage
	// collector works harder near it, keeping the daemon small on busy
	// machines. "0" means no limit. Default "72MiB" (the real-image
	// benchmark, 56k files in 4 layers: live heap ~60 MB, peak RSS 88 MiB;
	// 128MiB let it reach 125-135 MiB).
	MemoryLimit ByteSize `toml:"memory_limit"`
}

// FetchConfig controls range requests to registries, all priorities: a
// container's reads first, then read-ahead, prefetch and verification.
type FetchConfig struct {
	// Concurrency is the number of range requests in flight at once, over
	// all layers; a container's read takes the slot of a background fetch
	// when none is free. Default 16.
	Concurrency int `toml:"concurrency"`
	// ReadAhead is how much compressed data is fetched ahead of a reader
	// going through a layer in order ("0" disables it). Default "8MiB".
	ReadAhead ByteSize `toml:"read_ahead"`
}

// PrefetchConfig controls the background fetch of whole layers.
type PrefetchConfig struct {
	// Enabled starts a background fetch of every span of a layer once it is
	// mounted. Default true.
	Enabled bool `toml:"enabled"`
	// Concurrency is the number of range requests in flight for prefetching
	// and verification, over all layers (within fetch.concurrency); they run
	// only while no container waits for a read. Default 4.
	Concurrency int `toml:"concurrency"`
	// BatchSize is the amount of compressed data asked for in one range
	// request. Default "16MiB".
	BatchSize ByteSize `toml:"batch_size"`
	// Bandwidth caps prefetch traffic in bytes per second ("100MiB"); 0 means
	// no cap. Default "0".
	Bandwidth ByteSize `toml:"bandwidth"`
}

// VerifyConfig controls whole-layer verification.
type VerifyConfig struct {
	// Enabled verifies every lazily served layer as a whole in the
	// background: blob digest, DiffID and every tar header against the
	// index, fetching (in order, at the lowest priority, within the
	// prefetch budget) what was not read or prefetched, prefetch on or
	// off. Spans are verified when fetched either way. Default true.
	Enabled bool `toml:"enabled"`
	// ProveCheckpoints serves the bytes of a gzip layer whose index was
	// not built or verified here (a registry's SOCI index, the shared
	// repository's) only once the layer's verification has proven the
	// checkpoint their span inflates from (it then runs on demand, up to
	// that span): no byte a forged checkpoint window could change reaches
	// a reader, at the cost of serving such a layer in order, as it
	// streams. false trusts such an index's windows as far as the
	// repository that served it until verification ends. Default true.
	ProveCheckpoints bool `toml:"prove_checkpoints"`
	// TrustIndexesFor lists repositories ("registry.example.com/team/",
	// "registry.example.com/app": a prefix ending in "/" or one exact
	// repository) whose images are served from an index found in their
	// registry or the shared repository without waiting for proofs: for
	// them, whoever can push that index is trusted as far as whoever can
	// push the image (its windows are still checked by the layer's
	// verification, which marks the layer bad on a mismatch). Default none.
	TrustIndexesFor []string `toml:"trust_indexes_for"`
}

// ArtifactsConfig controls where zTOCs and SOCI indexes are kept and shared.
type ArtifactsConfig struct {
	// SharedRepository is an OCI repository ("registry.example.com/lazypull/
	// artifacts") where the fleet shares the indexes it builds or verifies;
	// it must be writable with the credentials podman has for it. Indexes
	// read from it are used like those of a registry: for the image's
	// repository only until verified here. Default "" (local only).
	SharedRepository string `toml:"shared_repository"`
	// Share says whose indexes go to the shared repository (they hold file
	// names and some plaintext of the image): "public", images this daemon
	// reads without credentials; "all"; or "none". Default "public".
	Share string `toml:"share"`
	// PushToImageRegistry pushes indexes built on demand to the image's own
	// repository as SOCI v1 referrers, when the credentials allow. Default false.
	PushToImageRegistry bool `toml:"push_to_image_registry"`
}

// FUSEConfig tunes the FUSE mount.
type FUSEConfig struct {
	// AllowOther lets users other than the daemon's reach the mount (the
	// layers' own modes then apply below the layer directories, which stay
	// the daemon's user's alone). Not needed when podman runs as the
	// daemon's user: rootful podman with the root daemon, rootless podman
	// with the daemon in its user namespace (`podman unshare lazypull
	// serve`); overlay reads lower layers with the credentials of whoever
	// mounted it (podman), never a container's. Needed only when a daemon
	// serves podman processes of another uid; a non-root daemon then needs
	// user_allow_other in /etc/fuse.conf. Default false.
	AllowOther bool `toml:"allow_other"`
	// AttrTimeout is how long the kernel caches attributes and entries of
	// layer files (they never change). Default "1h".
	AttrTimeout Duration `toml:"attr_timeout"`
	// Debug logs every FUSE request. Default false.
	Debug bool `toml:"debug"`
	// Passthrough lets the kernel read files of verified layers whose bytes
	// are all here straight from a local copy (FUSE passthrough, Linux >=
	// 6.9, a daemon running as root); elsewhere reads come through the
	// daemon as always. Default true.
	Passthrough bool `toml:"passthrough"`
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
			Insecure:               []string{},
			RequestTimeout:         Duration(60 * time.Second),
			MaxRetries:             5,
			ResolveCacheTTL:        Duration(10 * time.Second),
			MirrorFirstByteTimeout: Duration(10 * time.Minute),
			MirrorWarmup:           Duration(time.Minute),
			HandoverPersistTTL:     Duration(time.Hour),
		},
		Index: IndexConfig{
			MinLayerSize: 10 << 20,
			SpanSize:     1 << 20,
			OnDemand:     "sync",
			Parallel:     4,
			MaxZtocSize:  512 << 20,
			MaxEntries:   1 << 20,
			MaxSpanSize:  64 << 20,
		},
		Cache: CacheConfig{
			SpanCacheSize:     CacheSize{Percent: 20},
			ArtifactCacheSize: CacheSize{Percent: 2},
			MemoryLimit:       72 << 20,
		},
		Fetch: FetchConfig{
			Concurrency: 16,
			ReadAhead:   8 << 20,
		},
		Prefetch: PrefetchConfig{
			Enabled:     true,
			Concurrency: 4,
			BatchSize:   16 << 20,
		},
		Artifacts: ArtifactsConfig{
			Share: "public",
		},
		Verify: VerifyConfig{
			Enabled:          true,
			ProveCheckpoints: true,
			TrustIndexesFor:  []string{},
		},
		FUSE: FUSEConfig{
			Passthrough: true,
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

// Load reads the configuration the way every lazypull process does (the
// daemon, `lazypull pull/index/status`, the storage plugin inside podman),
// with the defaults of the user the process acts for: rootless podman runs
// its storage code as uid 0 of a user namespace, where the system defaults
// (/var/lib/lazypull) would be wrong. path "" means, for an unprivileged
// user, $XDG_CONFIG_HOME/lazypull/config.toml when it exists, and otherwise
// (and for root) DefaultPath when it exists; without a file the defaults
// apply. A file named explicitly must exist. Unknown keys are errors.
func Load(path string) (Config, error) {
	rootless := unshare.IsRootless()
	cfg := DefaultFor(!rootless)
	if rootless && os.Geteuid() == 0 {
		// Inside the user namespace: the per-user paths must not fall back to
		// /run/user/0.
		fixUserPaths(&cfg)
	}
	explicit := path != ""
	if !explicit {
		path = DefaultPathFor(rootless)
		if _, err := os.Stat(path); rootless && errors.Is(err, os.ErrNotExist) {
			path = DefaultPath // what `lazypull serve` reads by default
		}
	}
	data, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist) && !explicit:
		return cfg, cfg.Validate()
	case err != nil:
		return cfg, fmt.Errorf("lazypull config: %w", err)
	}
	if err := Parse(data, &cfg); err != nil {
		return cfg, fmt.Errorf("lazypull config %s: %w", path, err)
	}
	return cfg, cfg.Validate()
}

// DefaultPathFor is the configuration file read when none is named:
// DefaultPath for root, $XDG_CONFIG_HOME/lazypull/config.toml
// (~/.config/lazypull/config.toml) for other users.
func DefaultPathFor(rootless bool) string {
	if !rootless {
		return DefaultPath
	}
	dir := os.Getenv("XDG_CONFIG_HOME")
	if dir == "" {
		home, _ := os.UserHomeDir()
		dir = filepath.Join(home, ".config")
	}
	return filepath.Join(dir, "lazypull", "config.toml")
}

// fixUserPaths replaces a mount point under /run/user/0 (what the defaults
// give inside a user namespace without XDG_RUNTIME_DIR) with the user's.
func fixUserPaths(cfg *Config) {
	if os.Getenv("XDG_RUNTIME_DIR") != "" {
		return
	}
	uid := strconv.Itoa(unshare.GetRootlessUID())
	cfg.MountPoint = filepath.Join("/run/user", uid, "lazypull", "store")
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
	if c.Registry.MirrorFirstByteTimeout <= 0 {
		bad("registry.mirror_first_byte_timeout must be positive")
	}
	if c.Registry.MirrorWarmup < 0 {
		bad("registry.mirror_warmup must not be negative")
	}
	if c.Registry.CertsDir != "" && !filepath.IsAbs(c.Registry.CertsDir) {
		bad("registry.certs_dir must be an absolute path, got %q", c.Registry.CertsDir)
	}
	if c.Registry.HandoverPersistTTL <= 0 || c.Registry.HandoverPersistTTL > Duration(24*time.Hour) {
		bad("registry.handover_persist_ttl must be within 1ns..24h, got %s", time.Duration(c.Registry.HandoverPersistTTL))
	}
	if c.Index.MaxSpanSize < 1<<20 || c.Index.MaxSpanSize > 1<<30 {
		bad("index.max_span_size must be within 1MiB..1GiB, got %s", c.Index.MaxSpanSize)
	}
	if c.Index.SpanSize < 64<<10 || c.Index.SpanSize > c.Index.MaxSpanSize/2 {
		bad("index.span_size must be within 64KiB..max_span_size/2 (%s), got %s", c.Index.MaxSpanSize/2, c.Index.SpanSize)
	}
	if c.Index.MaxZtocSize < 1<<20 || c.Index.MaxZtocSize > 2<<30 {
		bad("index.max_ztoc_size must be within 1MiB..2GiB, got %s", c.Index.MaxZtocSize)
	}
	if c.Index.MaxEntries < 1 || c.Index.MaxEntries > 1<<24 {
		bad("index.max_entries must be within 1..16777216, got %d", c.Index.MaxEntries)
	}
	switch c.Artifacts.Share {
	case "public", "all", "none":
	default:
		bad("artifacts.share must be public, all or none, got %q", c.Artifacts.Share)
	}
	switch c.Index.OnDemand {
	case "sync", "background", "off":
	default:
		bad("index.on_demand must be sync, background or off, got %q", c.Index.OnDemand)
	}
	if c.Index.Parallel < 1 || c.Index.Parallel > 64 {
		bad("index.parallel must be within 1..64, got %d", c.Index.Parallel)
	}
	if c.Cache.MemoryLimit != 0 && c.Cache.MemoryLimit < 32<<20 {
		bad("cache.memory_limit must be at least 32MiB, or 0, got %s", c.Cache.MemoryLimit)
	}
	if c.Fetch.Concurrency < 1 || c.Fetch.Concurrency > 256 {
		bad("fetch.concurrency must be within 1..256, got %d", c.Fetch.Concurrency)
	}
	for _, t := range c.Verify.TrustIndexesFor {
		if t == "" || t == "/" || strings.ContainsAny(t, "@ \t") {
			bad("verification.trust_indexes_for: %q is not a repository or a prefix ending in \"/\"", t)
		}
	}
	if c.Fetch.ReadAhead < 0 || c.Fetch.ReadAhead > 1<<30 {
		bad("fetch.read_ahead must be within 0..1GiB, got %s", c.Fetch.ReadAhead)
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
