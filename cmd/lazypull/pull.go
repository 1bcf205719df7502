package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/containers/image/v5/docker/reference"
	"github.com/containers/image/v5/pkg/cli/environment"
	"github.com/containers/image/v5/signature"
	"github.com/containers/image/v5/types"
	"github.com/containers/storage"
	"github.com/containers/storage/pkg/unshare"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/lazypull/lazypull/layerstore/config"
	"github.com/lazypull/lazypull/layerstore/control"
	storagedriver "github.com/lazypull/lazypull/storage_driver"
)

// pullFlags mirror the podman flags of the same names.
type pullFlags struct {
	storeFlags
	authFile, policy  string
	tlsVerify         bool
	arch, os, variant string
	eager, quiet      bool
	verify            bool
	verifyTimeout     time.Duration
	identity          string
}

func newPullCommand(g *globalFlags) *cobra.Command {
	f := &pullFlags{}
	cmd := &cobra.Command{
		Use:   "pull [flags] IMAGE",
		Short: "Pull an image lazily into podman's storage (for podman >= 5 and buildah)",
		Long: `Pulls IMAGE from its registry into the containers/storage store podman and
buildah use (the same storage.conf, or --root/--runroot/--storage-driver/--storage-opt),
creating every layer the running layer store serves lazily, and pulling the others
the ordinary way. Stock podman >= 5 then runs, inspects, builds on, saves and
removes the image like any other. (podman 4.x pulls lazily by itself through
storage.conf, and cannot list images whose layers are TOC-identified: see
contrib/README.md.)

Stock podman >= 5.1 never asks the layer store for plain gzip layers; this command
(or a podman built with lazypull's storage driver) does.

Lazily served layers get the record a download would give them (--identity
diffid, the default): their DiffID, sizes and ordinary layer and image IDs. podman
then treats the image as its own: "podman pull" of it later reuses every layer and
the image, "podman build"/"commit" on top of it reuse its layers without reading
them, and "podman images" never reads a layer's files for its size. With
--identity toc they get an identity of their own instead (a pseudo TOC digest), so
that ordinary pulls never share content the layer store has not verified as a
whole yet; podman then re-downloads the image on "podman pull" (keeping both) and
builds on it by reading its layers ("lazypull verify" gives them DiffIDs).

The layer store must be running ("lazypull serve"); without it, or with --eager,
the pull is an ordinary one. Run by an unprivileged user, the command continues in
rootless podman's user namespace (through "podman unshare"), where the user's layer
store is mounted (contrib/systemd/user/lazypull.service).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if os.Geteuid() != 0 {
				if err := reexecInUserNamespace(); err != nil {
					return err
				}
			}
			ctx, stop := signalContext(cmd.Context())
			defer stop()
			return runPull(ctx, g, f, args[0], cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	fl := cmd.Flags()
	f.storeFlags.register(fl)
	fl.StringVar(&f.authFile, "authfile", os.Getenv("REGISTRY_AUTH_FILE"), "registry credentials file (default: podman's search order)")
	fl.StringVar(&f.policy, "signature-policy", "", "signature policy file (default: podman's policy.json)")
	fl.BoolVar(&f.tlsVerify, "tls-verify", true, "require HTTPS and verify certificates (registries.conf may still mark a registry insecure)")
	fl.StringVar(&f.arch, "arch", "", "architecture to choose from a manifest list (default: this machine's)")
	fl.StringVar(&f.os, "os", "", "OS to choose from a manifest list (default: this machine's)")
	fl.StringVar(&f.variant, "variant", "", "architecture variant to choose from a manifest list")
	fl.BoolVar(&f.eager, "eager", false, "pull every layer the ordinary way (for comparisons)")
	fl.BoolVarP(&f.quiet, "quiet", "q", false, "print only the image ID")
	fl.BoolVar(&f.verify, "verify", false, "after the pull, wait until the layer store has fetched and verified every lazy layer, then make them ordinary DiffID-identified layers (podman 4.x can then use the image)")
	fl.DurationVar(&f.verifyTimeout, "verify-timeout", 30*time.Minute, "how long --verify waits")
	fl.StringVar(&f.identity, "identity", storagedriver.IdentityDiffID.String(), `how lazily served layers are identified: "diffid" (the record a download would write; podman shares them with its own pulls and builds) or "toc" (a namespace of their own until verified)`)
	return cmd
}

// reexecInUserNamespace continues the command of an unprivileged user in
// rootless podman's user and mount namespaces, where the user's storage is
// writable and the user's layer store (run with `podman unshare lazypull
// serve`) is mounted: through `podman unshare`, or, without podman, in a new
// user namespace like buildah. It returns only on failure.
func reexecInUserNamespace() error {
	if podman, err := exec.LookPath("podman"); err == nil {
		self, err := os.Executable()
		if err != nil {
			return fmt.Errorf("rootless: %w", err)
		}
		args := append([]string{"podman", "unshare", self}, os.Args[1:]...)
		return fmt.Errorf("rootless: podman unshare: %w", syscall.Exec(podman, args, os.Environ()))
	}
	unshare.MaybeReexecUsingUserNamespace(false)
	return errors.New("rootless: could not enter a user namespace")
}

func runPull(ctx context.Context, g *globalFlags, f *pullFlags, name string, stdout, stderr io.Writer) error {
	cfg, err := loadConfig(g)
	if err != nil {
		return err
	}
	identity, err := storagedriver.ParseIdentity(f.identity)
	if err != nil {
		return err
	}
	sys := &types.SystemContext{
		AuthFilePath:       f.authFile,
		ArchitectureChoice: f.arch, OSChoice: f.os, VariantChoice: f.variant,
		DockerRegistryUserAgent: "lazypull/" + version,
	}
	// Reach registries as the daemon does: its registries.conf and certs.d.
	if rc := cfg.Registry.RegistriesConf; rc != "" {
		sys.SystemRegistriesConfPath, sys.SystemRegistriesConfDirPath = rc, rc+".d"
	} else if err := environment.UpdateRegistriesConf(sys); err != nil { // CONTAINERS_REGISTRIES_CONF, like podman
		return err
	}
	sys.DockerPerHostCertDirPath = cfg.Registry.CertsDir
	if !f.tlsVerify {
		sys.DockerInsecureSkipTLSVerify = types.NewOptionalBool(true)
	}
	if f.policy != "" {
		sys.SignaturePolicyPath = f.policy
	}
	progress := stderr
	if f.quiet {
		progress = io.Discard
	}
	storeOpts, err := pullStoreOptions(ctx, f, cfg, progress)
	if err != nil {
		return err
	}
	store, err := storage.GetStore(storeOpts)
	if err != nil {
		return fmt.Errorf("open storage: %w", err)
	}
	defer func() { _, _ = store.Shutdown(false) }()

	policy, err := signature.DefaultPolicy(sys)
	if err != nil {
		return fmt.Errorf("signature policy: %w", err)
	}
	pc, err := signature.NewPolicyContext(policy)
	if err != nil {
		return fmt.Errorf("signature policy: %w", err)
	}
	defer pc.Destroy()

	ref, err := parseImageName(name)
	if err != nil {
		return err
	}
	opts := &storagedriver.Options{
		SystemContext: sys, PolicyContext: pc, Eager: f.eager, Identity: identity,
		DaemonSocket: cfg.Socket, Log: newLogger(cfg),
		Progress: func(l storagedriver.LayerResult) {
			fmt.Fprintf(progress, "%s  %-6s  %s\n", shortDigest(l.Digest.String()), l.Source, size(l.Size))
		},
	}
	res, err := storagedriver.Pull(ctx, store, ref, opts)
	if err != nil {
		return err
	}
	n := map[storagedriver.LayerSource]int{}
	for _, l := range res.Layers {
		n[l.Source]++
	}
	fmt.Fprintf(progress, "Pulled %s in %s: %d layers lazy, %d pulled, %d reused\n", res.Name,
		res.Took.Round(1e6), n[storagedriver.SourceLazy], n[storagedriver.SourcePulled], n[storagedriver.SourceReused])
	if f.verify && n[storagedriver.SourceLazy] > 0 {
		if err := promote(ctx, store, cfg, res.ImageID, f.verifyTimeout, progress); err != nil {
			return err
		}
	}
	fmt.Fprintln(stdout, res.ImageID)
	return nil
}

// promote waits for the layer store to verify the image's lazy layers and
// gives them their DiffIDs (storagedriver.Promote).
func promote(ctx context.Context, store storage.Store, cfg config.Config, image string, wait time.Duration, progress io.Writer) error {
	fmt.Fprintf(progress, "Waiting for the layer store to fetch and verify the lazy layers (at most %s)\n", wait)
	pr, err := storagedriver.Promote(ctx, store, image, control.NewClient(cfg.Socket).Status, wait)
	if err != nil {
		return err
	}
	fmt.Fprintf(progress, "Verified: %d layers now identified by DiffID (%d were already), %d lazy layers identified by DiffID verified\n", len(pr.Promoted), pr.Already, len(pr.Verified))
	return nil
}

func newVerifyCommand(g *globalFlags) *cobra.Command {
	f := &pullFlags{}
	cmd := &cobra.Command{
		Use:   "verify [flags] IMAGE",
		Short: "Wait until a lazily pulled image is fetched and verified, then make its layers ordinary ones",
		Long: `Waits until the layer store has fetched every lazily served layer of IMAGE (in
podman's storage, as "lazypull pull" put it there) and verified it as a whole: blob
digest, DiffID from the image config, every tar header. Then layers pulled with
--identity toc get their DiffIDs, like layers of an ordinary pull: podman 4.x and
buildah 1.2x (which need a DiffID for every layer) can list, inspect, run and save
the image, and later pulls may reuse its layers. The files are still served by the
layer store.

It asks the layer store to serve each layer first (a restarted store takes it up
again), and fails at once, saying why, when the store cannot serve a layer, found
one bad, or will not fetch it (prefetch and verification off). Interrupted
(SIGINT, SIGTERM), it stops and leaves nothing mounted.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if os.Geteuid() != 0 {
				if err := reexecInUserNamespace(); err != nil {
					return err
				}
			}
			ctx, stop := signalContext(cmd.Context())
			defer stop()
			cfg, err := loadConfig(g)
			if err != nil {
				return err
			}
			opts, err := f.storeOptions()
			if err != nil {
				return err
			}
			store, err := storage.GetStore(opts)
			if err != nil {
				return fmt.Errorf("open storage: %w", err)
			}
			defer func() { _, _ = store.Shutdown(false) }()
			return promote(ctx, store, cfg, strings.TrimPrefix(args[0], "docker://"), f.verifyTimeout, cmd.ErrOrStderr())
		},
	}
	fl := cmd.Flags()
	f.storeFlags.register(fl)
	fl.DurationVar(&f.verifyTimeout, "timeout", 30*time.Minute, "how long to wait for the layer store")
	return cmd
}

// storeFlags choose podman's storage, with podman's flag names.
type storeFlags struct {
	root, runRoot, driver string
	storageOpts           []string
}

func (f *storeFlags) register(fl *pflag.FlagSet) {
	fl.StringVar(&f.root, "root", "", "storage root directory (default: storage.conf's graphroot)")
	fl.StringVar(&f.runRoot, "runroot", "", "storage state directory (default: storage.conf's runroot)")
	fl.StringVar(&f.driver, "storage-driver", "", "storage driver (default: storage.conf's driver)")
	fl.StringArrayVar(&f.storageOpts, "storage-opt", nil, "storage driver option (replaces storage.conf's driver options, like podman)")
}

// storeOptions returns podman's store options (storage.conf) with the
// flags' overrides.
func (f *storeFlags) storeOptions() (storage.StoreOptions, error) {
	opts, err := storage.DefaultStoreOptions()
	if err != nil {
		return opts, fmt.Errorf("storage configuration: %w", err)
	}
	if f.root != "" {
		opts.GraphRoot = f.root
	}
	if f.runRoot != "" {
		opts.RunRoot = f.runRoot
	}
	if f.driver != "" {
		opts.GraphDriverName = f.driver
	}
	if len(f.storageOpts) > 0 {
		opts.GraphDriverOptions = f.storageOpts
	}
	return opts, nil
}

// parseImageName parses a fully qualified image name ("docker://" allowed).
// Short names are refused rather than guessed: podman resolves them through
// registries.conf aliases and search registries, with prompts.
func parseImageName(name string) (reference.Named, error) {
	name = strings.TrimPrefix(name, "docker://")
	ref, err := reference.ParseNormalizedNamed(name)
	if err != nil {
		return nil, fmt.Errorf("image name %q: %w", name, err)
	}
	if reference.Domain(ref) == "docker.io" && !strings.HasPrefix(name, "docker.io/") {
		return nil, fmt.Errorf("image name %q: use a fully qualified name (registry/repository:tag, e.g. docker.io/%s)", name, reference.FamiliarName(ref))
	}
	return ref, nil
}

// pullStoreOptions returns podman's store options with the command's
// overrides and, for an overlay store without it, the running layer store's
// mount as Additional Layer Store.
func pullStoreOptions(ctx context.Context, f *pullFlags, cfg config.Config, progress io.Writer) (storage.StoreOptions, error) {
	opts, err := f.storeOptions()
	if err != nil {
		return opts, err
	}
	if f.eager || opts.GraphDriverName == storagedriver.DriverName {
		return opts, nil // the lazypull driver configures itself
	}
	if opts.GraphDriverName != "overlay" {
		fmt.Fprintf(progress, "The storage driver is %q, not overlay: pulling the ordinary way\n", opts.GraphDriverName)
		return opts, nil
	}
	mountPoint := cfg.MountPoint
	for _, o := range opts.GraphDriverOptions {
		if strings.Contains(o, "additionallayerstore="+mountPoint+":ref") {
			return opts, nil
		}
	}
	if err := storagedriver.DaemonRunning(ctx, cfg); err != nil {
		fmt.Fprintf(progress, "The layer store is not running (%v): pulling the ordinary way\n", err)
		return opts, nil
	}
	opts.GraphDriverOptions = append(opts.GraphDriverOptions, "overlay.additionallayerstore="+mountPoint+":ref")
	return opts, nil
}
