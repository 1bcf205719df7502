package storagedriver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/containers/image/v5/docker"
	"github.com/containers/image/v5/docker/reference"
	"github.com/containers/image/v5/image"
	"github.com/containers/image/v5/manifest"
	dockerconfig "github.com/containers/image/v5/pkg/docker/config"
	"github.com/containers/image/v5/signature"
	"github.com/containers/image/v5/types"
	"github.com/containers/storage"
	digest "github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
	"golang.org/x/sync/errgroup"

	"github.com/lazypull/lazypull/layerstore/control"
)

// Options configure a Pull. The zero value pulls like podman with the
// system's configuration.
type Options struct {
	// SystemContext configures registry access (auth file, registries.conf,
	// TLS, platform choice, big-file temporary directory). Default nil: the
	// system defaults, as podman without flags.
	SystemContext *types.SystemContext
	// PolicyContext checks the image against the signature policy before
	// anything else of it is read; a PolicyContext is not safe for
	// concurrent use, so concurrent pulls need one each. Default: one built
	// per pull from signature.DefaultPolicy(SystemContext), like podman.
	PolicyContext *signature.PolicyContext
	// Eager pulls every layer the ordinary way, without asking the layer
	// store (a normal pull, for comparisons). Default false.
	Eager bool
	// Concurrency is the number of layers looked up or downloaded at the
	// same time. Default 3 (containers/image's default).
	Concurrency int
	// DaemonSocket, when set, is the control socket of the layer store
	// daemon: the credentials this pull uses for the image are handed to
	// it (as podman >= 5.2 does through its auth helper), so that the
	// daemon can read a private image. Default "": the socket of the store's
	// lazypull graph driver, else no hand-over.
	DaemonSocket string
	// Log receives Debug lines per layer and Warn lines when the layer store
	// misbehaves. Default: silent.
	Log *logrus.Entry
	// Progress, when set, is called once per layer when it is in the store.
	Progress func(LayerResult)
	// Identity is how lazily served layers are identified in the store.
	// Default IdentityTOC (the plugin's namespace of their own).
	Identity Identity
}

// Identity says how a pull identifies the layers it creates lazily.
type Identity int

const (
	// IdentityTOC gives lazily served layers an identity of their own (the
	// blob digest as pseudo TOC digest, TOC chain IDs, a TOC image ID; see
	// the package documentation): ordinary pulls of the same image never
	// share them.
	IdentityTOC Identity = iota
	// IdentityDiffID gives lazily served layers the record a download would
	// write: compressed digest and size, the config's DiffID and the exact
	// tar size, ordinary chain IDs and the config digest as image ID (what
	// podman 4.x gets from the layer store, identityLegacy there). Stock
	// podman >= 5 then treats the image as its own: a later `podman pull`
	// of it reuses every layer and the image record, `podman build` and
	// `commit` on top of it reuse the base layers by DiffID without reading
	// them, and sizes come from the record, never from walking the layer's
	// files. The content is served before the layer store has verified it
	// as a whole (each span is checked when fetched; the layer as a whole
	// once prefetched, `lazypull verify` waits for that).
	IdentityDiffID
)

// String returns the flag value of the identity ("toc", "diffid").
func (i Identity) String() string {
	switch i {
	case IdentityTOC:
		return "toc"
	case IdentityDiffID:
		return "diffid"
	}
	return fmt.Sprintf("identity(%d)", int(i))
}

// ParseIdentity parses "toc" or "diffid".
func ParseIdentity(s string) (Identity, error) {
	switch s {
	case "toc":
		return IdentityTOC, nil
	case "diffid":
		return IdentityDiffID, nil
	}
	return 0, fmt.Errorf("layer identity %q: want \"diffid\" or \"toc\"", s)
}

// LayerSource says where a layer of a pull came from.
type LayerSource string

// The sources of a layer.
const (
	// SourceReused: the store already had the layer (same ID).
	SourceReused LayerSource = "reused"
	// SourceLazy: created from the Additional Layer Store, served lazily.
	SourceLazy LayerSource = "lazy"
	// SourcePulled: downloaded, verified and extracted.
	SourcePulled LayerSource = "pulled"
)

// LayerResult describes one layer of a pulled image.
type LayerResult struct {
	// Index is the layer's position in the manifest, base layer first.
	Index int
	// Digest and Size are the blob's, from the manifest.
	Digest digest.Digest
	Size   int64
	// ID is the layer's ID in the store.
	ID string
	// Identity is how the layer is identified (see LayerID).
	Identity LayerIdentity
	Source   LayerSource
}

// Result describes a pulled image.
type Result struct {
	// ImageID is the image's ID in the store.
	ImageID string
	// Name is the name recorded on the image (the reference pulled).
	Name string
	// ManifestDigest is the digest of the (per-platform) manifest stored.
	ManifestDigest digest.Digest
	// Layers are the image's layers, base first.
	Layers []LayerResult
	// Took is the duration of the pull.
	Took time.Duration
}

// Pull pulls the image ref (a docker reference; a name without tag gets
// ":latest") from its registry into store, as containers/image would, except
// that every layer the store's Additional Layer Store serves is created from
// it lazily, identified as Options.Identity says (by default by pseudo TOC
// digest; see the package documentation). Layers the store cannot serve are downloaded, verified
// against the manifest digest and the config's DiffID, and extracted. The
// image record (names, manifest, config, signatures, digests) is the one a
// normal pull writes, so podman and buildah use the image like any other.
func Pull(ctx context.Context, store storage.Store, ref reference.Named, opts *Options) (*Result, error) {
	start := time.Now()
	o := Options{}
	if opts != nil {
		o = *opts
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 3
	}
	if o.Log == nil {
		silent := logrus.New()
		silent.SetOutput(io.Discard)
		o.Log = logrus.NewEntry(silent)
	}
	ref = reference.TagNameOnly(ref)
	log := o.Log.WithField("ref", ref.String())

	srcRef, err := docker.NewReference(ref)
	if err != nil {
		return nil, fmt.Errorf("pull %s: %w", ref, err)
	}
	src, err := srcRef.NewImageSource(ctx, o.SystemContext)
	if err != nil {
		return nil, fmt.Errorf("pull %s: %w", ref, err)
	}
	defer src.Close()

	unparsed, topManifest, err := chooseImage(ctx, src, o.SystemContext)
	if err != nil {
		return nil, fmt.Errorf("pull %s: %w", ref, err)
	}
	// The policy check comes before anything else of the image is read,
	// as in containers/image's copy.
	if err := checkPolicy(ctx, o, unparsed); err != nil {
		return nil, fmt.Errorf("pull %s: %w", ref, err)
	}
	p, err := newPlan(ctx, o.SystemContext, unparsed, topManifest)
	if err != nil {
		return nil, fmt.Errorf("pull %s: %w", ref, err)
	}
	if o.DaemonSocket == "" {
		// The plugin's driver knows its store's socket.
		if d, err := store.GraphDriver(); err == nil {
			if ld, ok := d.(*Driver); ok && ld.lazy == nil {
				o.DaemonSocket = ld.cfg.Socket
			}
		}
	}
	if o.DaemonSocket != "" && !o.Eager {
		handOver(ctx, o, ref, log)
	}

	tmp, err := os.MkdirTemp(bigFilesDir(o.SystemContext), "lazypull-pull-")
	if err != nil {
		return nil, fmt.Errorf("pull %s: temporary directory: %w", ref, err)
	}
	defer os.RemoveAll(tmp)

	puller := &layerPuller{
		store: store, src: src, ref: ref, plan: p, opts: o, tmp: tmp, log: log,
		prepared: make([]preparedLayer, len(p.layers)),
	}
	defer puller.release()
	if err := puller.prepareAll(ctx); err != nil {
		return nil, fmt.Errorf("pull %s: %w", ref, err)
	}
	layers, err := puller.commitAll(ctx)
	if err != nil {
		return nil, fmt.Errorf("pull %s: %w", ref, err)
	}
	storeMu.Lock()
	imageID, err := commitImage(store, ref, p, layers)
	storeMu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("pull %s: %w", ref, err)
	}
	return &Result{
		ImageID:        imageID,
		Name:           ref.String(),
		ManifestDigest: p.manifestDigest,
		Layers:         layers,
		Took:           time.Since(start),
	}, nil
}

// chooseImage returns the image of src to pull (for a manifest list, the
// instance for the platform sys asks for, as podman chooses it) and the
// top-level manifest. A digested reference's manifest is checked against
// its digest.
func chooseImage(ctx context.Context, src types.ImageSource, sys *types.SystemContext) (*image.UnparsedImage, []byte, error) {
	top := image.UnparsedInstance(src, nil)
	topManifest, topMIME, err := top.Manifest(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("manifest: %w", err)
	}
	if !manifest.MIMETypeIsMultiImage(topMIME) {
		return top, topManifest, nil
	}
	list, err := manifest.ListFromBlob(topManifest, topMIME)
	if err != nil {
		return nil, nil, fmt.Errorf("manifest list: %w", err)
	}
	instance, err := list.ChooseInstance(sys)
	if err != nil {
		return nil, nil, fmt.Errorf("choosing an image from the manifest list: %w", err)
	}
	return image.UnparsedInstance(src, &instance), topManifest, nil
}

// checkPolicy checks unparsed against the signature policy.
func checkPolicy(ctx context.Context, o Options, unparsed *image.UnparsedImage) error {
	pc := o.PolicyContext
	if pc == nil {
		policy, err := signature.DefaultPolicy(o.SystemContext)
		if err != nil {
			return fmt.Errorf("signature policy: %w", err)
		}
		if pc, err = signature.NewPolicyContext(policy); err != nil {
			return fmt.Errorf("signature policy: %w", err)
		}
		defer pc.Destroy()
	}
	allowed, err := pc.IsRunningImageAllowed(ctx, unparsed)
	if !allowed || err != nil { // either one alone rejects
		if err == nil {
			err = errors.New("not allowed")
		}
		return fmt.Errorf("%w: %w", ErrRejected, err)
	}
	return nil
}

// handOver gives the daemon this pull's credentials for ref; failures only
// make lazy serving less likely, so they are logged.
func handOver(ctx context.Context, o Options, ref reference.Named, log *logrus.Entry) {
	cred, err := dockerconfig.GetCredentialsForRef(o.SystemContext, ref)
	if err != nil {
		log.WithError(err).Debug("No credentials to hand over to the layer store")
		return
	}
	// An anonymous pull hands over the zero credential, which deletes
	// what an earlier pull of the image handed over (podman's auth helper
	// does the same): the daemon then reads the image as the pull did.
	c := control.Credential{}
	if cred.Username != "" || cred.IdentityToken != "" {
		c = control.Credential{Username: cred.Username, Password: cred.Password, IdentityToken: cred.IdentityToken}
	}
	hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	err = control.NewClient(o.DaemonSocket).Handover(hctx, map[string]control.Credential{ref.String(): c})
	if err != nil {
		log.WithError(err).Warn("Handing credentials over to the layer store failed")
	}
}

// storeMu serializes this package's calls into containers/storage, except
// LookupAdditionalLayer (which takes no read locks and may wait for the
// daemon): containers/storage v1.59's lock files race (benignly, but the
// race detector reports it) when two goroutines of one process hold a read
// lock on the same store at once (LockFile.AssertLocked reads the lock
// state without its mutex while another reader sets it). Writes are
// serialized by containers/storage anyway, so this costs little.
var storeMu sync.Mutex

// bigFilesDir is where downloaded layer blobs wait to be extracted, as in
// containers/image: SystemContext.BigFilesTemporaryDir, $TMPDIR, /var/tmp.
func bigFilesDir(sys *types.SystemContext) string {
	if sys != nil && sys.BigFilesTemporaryDir != "" {
		return sys.BigFilesTemporaryDir
	}
	if d := os.Getenv("TMPDIR"); d != "" {
		return d
	}
	return "/var/tmp"
}

// plan is what a pull needs to know of the image before any layer.
type plan struct {
	topManifest    []byte
	manifest       []byte
	manifestMIME   string
	manifestDigest digest.Digest
	configDigest   digest.Digest
	config         []byte
	created        time.Time
	layers         []types.BlobInfo
	// diffIDs are the config's DiffIDs, one per layer, or nil when the
	// config has none (then only the blob digests are verified).
	diffIDs    []digest.Digest
	signatures [][]byte
}

func newPlan(ctx context.Context, sys *types.SystemContext, unparsed *image.UnparsedImage, topManifest []byte) (*plan, error) {
	blob, mime, err := unparsed.Manifest(ctx)
	if err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	md, err := manifest.Digest(blob)
	if err != nil {
		return nil, fmt.Errorf("manifest digest: %w", err)
	}
	img, err := image.FromUnparsedImage(ctx, sys, unparsed)
	if err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	ci := img.ConfigInfo()
	if ci.Digest == "" {
		return nil, fmt.Errorf("%w: manifest type %s has no config (schema1)", ErrUnsupportedImage, mime)
	}
	config, err := img.ConfigBlob(ctx)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	oci, err := img.OCIConfig(ctx)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	layers := img.LayerInfos()
	for _, l := range layers {
		if strings.Contains(l.MediaType, "+encrypted") {
			return nil, fmt.Errorf("%w: layer %s is encrypted", ErrUnsupportedImage, l.Digest)
		}
		if err := l.Digest.Validate(); err != nil {
			return nil, fmt.Errorf("%w: layer digest %q: %w", ErrUnsupportedImage, l.Digest, err)
		}
	}
	p := &plan{
		topManifest: topManifest, manifest: blob, manifestMIME: mime, manifestDigest: md,
		configDigest: ci.Digest, config: config, layers: layers,
	}
	if oci.Created != nil {
		p.created = *oci.Created
	}
	// Missing DiffIDs are tolerated like containers/image does (only the
	// blob digests are then checked); a partial list is an error.
	for _, d := range oci.RootFS.DiffIDs {
		if d != "" {
			p.diffIDs = oci.RootFS.DiffIDs
			break
		}
	}
	if p.diffIDs != nil {
		if len(p.diffIDs) != len(layers) {
			return nil, fmt.Errorf("%w: the config lists %d DiffIDs for %d layers", ErrUnsupportedImage, len(p.diffIDs), len(layers))
		}
		for i, d := range p.diffIDs {
			if err := d.Validate(); err != nil {
				return nil, fmt.Errorf("%w: DiffID %d: %w", ErrUnsupportedImage, i, err)
			}
		}
	}
	if p.signatures, err = unparsed.Signatures(ctx); err != nil {
		return nil, fmt.Errorf("signatures: %w", err)
	}
	return p, nil
}

// diffID returns the config's DiffID of layer i, or "" when unknown.
func (p *plan) diffID(i int) digest.Digest {
	if p.diffIDs == nil {
		return ""
	}
	return p.diffIDs[i]
}

// layerPuller brings the layers of one image into the store: lookups and
// downloads run concurrently (prepareAll), layers are created in order
// (commitAll) because each one's ID depends on its parent's.
type layerPuller struct {
	store storage.Store
	src   types.ImageSource
	ref   reference.Named
	plan  *plan
	opts  Options
	tmp   string
	log   *logrus.Entry

	// prepared is written by prepareAll (one goroutine per index) and read by
	// commitAll after prepareAll returned.
	prepared []preparedLayer
}

// preparedLayer is what the prepare phase learned about one layer.
type preparedLayer struct {
	// identity is trusted: a DiffID that was verified (by us now or by an
	// earlier pull that stored a layer with this blob digest), or the blob
	// digest as pseudo TOC of a lazily served layer.
	identity LayerIdentity
	// al is the Additional Layer Store's layer (lazy), released by release.
	al storage.AdditionalLayer
	// file holds the verified blob when it was downloaded.
	file string
}

func (lp *layerPuller) prepareAll(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(lp.opts.Concurrency)
	for i := range lp.plan.layers {
		g.Go(func() error {
			pl, err := lp.prepare(gctx, i)
			if err != nil {
				return fmt.Errorf("layer %d (%s): %w", i, lp.plan.layers[i].Digest, err)
			}
			lp.prepared[i] = pl
			return nil
		})
	}
	return g.Wait()
}

// prepare finds out how layer i can be had, cheapest first: a verified
// layer with the same blob already in the store, the layer store (lazy), a
// download.
func (lp *layerPuller) prepare(ctx context.Context, i int) (preparedLayer, error) {
	blob := lp.plan.layers[i]
	want := lp.plan.diffID(i)
	if d := lp.verifiedDiffID(blob.Digest); d != "" {
		if want != "" && d != want {
			return preparedLayer{}, fmt.Errorf("%w: the store has this blob as %s, the config says %s", ErrDiffIDMismatch, d, want)
		}
		return preparedLayer{identity: LayerIdentity{DiffID: d}}, nil
	}
	if !lp.opts.Eager {
		switch {
		case lp.opts.Identity == IdentityTOC:
			if al := lp.lookupLazy(blob.Digest); al != nil {
				return preparedLayer{identity: LayerIdentity{TOCDigest: blob.Digest}, al: al}, nil
			}
		case want != "": // a layer identified by DiffID needs the config's
			if al := lp.lookupLazy(blob.Digest); al != nil {
				return preparedLayer{identity: LayerIdentity{DiffID: want}, al: al}, nil
			}
		}
	}
	file, diffID, err := lp.download(ctx, i)
	if err != nil {
		return preparedLayer{}, err
	}
	return preparedLayer{identity: LayerIdentity{DiffID: diffID}, file: file}, nil
}

// verifiedDiffID returns the DiffID of a layer in the store made from the
// blob dgst, or "".
func (lp *layerPuller) verifiedDiffID(dgst digest.Digest) digest.Digest {
	storeMu.Lock()
	layers, err := lp.store.LayersByCompressedDigest(dgst)
	storeMu.Unlock()
	if err != nil {
		return ""
	}
	for _, l := range layers {
		if l.UncompressedDigest != "" {
			return l.UncompressedDigest
		}
	}
	return ""
}

// lookupLazy asks the store's Additional Layer Store for the blob dgst (under
// the pseudo-TOC reference for IdentityTOC, the image reference itself for
// IdentityDiffID); nil means "not served".
func (lp *layerPuller) lookupLazy(dgst digest.Digest) storage.AdditionalLayer {
	log := lp.log.WithField("layer", dgst)
	ref := lp.ref.String()
	if lp.opts.Identity == IdentityTOC {
		ref = TOCRef(ref)
	}
	al, err := lp.store.LookupAdditionalLayer(dgst, ref)
	if err != nil {
		if !errors.Is(err, storage.ErrLayerUnknown) {
			log.WithError(err).Warn("Additional Layer Store lookup failed; pulling the layer")
		}
		return nil
	}
	want := dgst
	if lp.opts.Identity == IdentityDiffID {
		want = ""
	}
	if got := al.TOCDigest(); got != want {
		// An older store without the pseudo-TOC identity, or a confused
		// one: its layer must not enter the store.
		al.Release()
		log.WithField("toc_digest", got).Warn("Additional Layer Store answered with another identity; pulling the layer")
		return nil
	}
	return al
}

// release lets go of the Additional Layer Store handles (a layer created
// from one keeps its own reference).
func (lp *layerPuller) release() {
	for i := range lp.prepared {
		if al := lp.prepared[i].al; al != nil {
			al.Release()
			lp.prepared[i].al = nil
		}
	}
}
