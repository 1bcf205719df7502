package remote

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/containers/image/v5/docker/reference"
	"github.com/containers/image/v5/pkg/sysregistriesv2"
	digest "github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
)

// dockerHubAPIHost serves the registry API of docker.io references.
const dockerHubAPIHost = "registry-1.docker.io"

// endpoint is one place that can serve an image: a mirror or the primary
// location, after the rewrites of registries.conf.
type endpoint struct {
	// ref is the image reference at this endpoint (rewritten).
	ref reference.Named
	// host is the host[:port] serving the registry API.
	host     string
	mirror   bool
	insecure bool
	// base is the transport of requests made for this endpoint.
	base http.RoundTripper
}

// name is the repository at the endpoint, e.g. "mirror:5000/library/alpine".
func (e *endpoint) name() string { return e.ref.Name() }

// apiHost maps a reference domain to the host serving its API.
func apiHost(domain string) string {
	if domain == "docker.io" {
		return dockerHubAPIHost
	}
	return domain
}

// BlockedError is returned when registries.conf blocks the registry of a
// reference (`blocked = true`); it reads like podman's message and matches
// ErrBlocked.
type BlockedError struct {
	// Prefix is the registries.conf entry that blocks it; Config describes
	// the files read.
	Prefix, Config string
}

func (e *BlockedError) Error() string {
	return fmt.Sprintf("registry %s is blocked in %s", e.Prefix, e.Config)
}

// Is makes errors.Is(err, ErrBlocked) true.
func (e *BlockedError) Is(target error) bool { return target == ErrBlocked }

// endpoints returns where ref can be pulled from, in podman's order: the
// mirrors of its registries.conf entry that apply to the reference (all, or
// only those whose pull-from-mirror allows a tag or a digest reference),
// then the primary location, each with the entry's location rewrite applied
// and its own `insecure` setting. Endpoints in a blocked namespace are left
// out; when that leaves none, a *BlockedError is returned.
func (c *Client) endpoints(ref reference.Named) ([]*endpoint, error) {
	key := ref.String()
	c.mu.Lock()
	eps, ok := c.endpointCache[key]
	c.mu.Unlock()
	if ok {
		return eps, nil
	}
	eps, err := c.findEndpoints(ref)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.endpointCache) >= maxEndpointCache {
		clear(c.endpointCache)
	}
	c.endpointCache[key] = eps
	return eps, nil
}

// maxEndpointCache bounds the endpoint lists kept (one per reference).
const maxEndpointCache = 4096

func (c *Client) findEndpoints(ref reference.Named) ([]*endpoint, error) {
	if c.sys == nil {
		return []*endpoint{c.newEndpoint(ref, false, c.listedInsecure(reference.Domain(ref)))}, nil
	}
	reg, err := sysregistriesv2.FindRegistry(c.sys, ref.Name())
	if err != nil {
		return nil, fmt.Errorf("registries.conf: %w", err)
	}
	if reg == nil {
		return []*endpoint{c.newEndpoint(ref, false, c.listedInsecure(reference.Domain(ref)))}, nil
	}
	if reg.Blocked {
		return nil, &BlockedError{Prefix: reg.Prefix, Config: c.confDescription()}
	}
	sources, err := reg.PullSourcesFromReference(ref)
	if err != nil {
		return nil, fmt.Errorf("registries.conf entry %s: %w", reg.Prefix, err)
	}
	var (
		eps     []*endpoint
		blocked error
	)
	for i, src := range sources {
		primary := i == len(sources)-1
		// Like podman, an endpoint whose own namespace is blocked is refused.
		if r, err := sysregistriesv2.FindRegistry(c.sys, src.Reference.Name()); err == nil && r != nil && r.Blocked {
			blocked = &BlockedError{Prefix: r.Prefix, Config: c.confDescription()}
			c.log.WithFields(logrus.Fields{"endpoint": src.Reference.Name(), "image": ref.String()}).Debug("Registry endpoint is blocked, left out")
			continue
		}
		insecure := src.Endpoint.Insecure || c.listedInsecure(reference.Domain(src.Reference))
		eps = append(eps, c.newEndpoint(src.Reference, !primary, insecure))
	}
	if len(eps) == 0 {
		return nil, blocked
	}
	return eps, nil
}

func (c *Client) newEndpoint(ref reference.Named, mirror, insecure bool) *endpoint {
	host := apiHost(reference.Domain(ref))
	return &endpoint{ref: ref, host: host, mirror: mirror, insecure: insecure,
		base: &endpointTransport{c: c, host: host, insecure: insecure}}
}

// pushEndpoint is where ref is pushed to: its own registry, neither mirrors
// nor location rewrites (as podman pushes), unless blocked.
func (c *Client) pushEndpoint(ref reference.Named) (*endpoint, error) {
	insecure := c.listedInsecure(reference.Domain(ref))
	if c.sys != nil {
		reg, err := sysregistriesv2.FindRegistry(c.sys, ref.Name())
		if err != nil {
			return nil, fmt.Errorf("registries.conf: %w", err)
		}
		if reg != nil {
			if reg.Blocked {
				return nil, &BlockedError{Prefix: reg.Prefix, Config: c.confDescription()}
			}
			insecure = insecure || reg.Insecure
		}
	}
	return c.newEndpoint(ref, false, insecure), nil
}

// confDescription names the registries.conf files read, as podman's
// message about blocked registries does ("<file> or <drop-in directory>").
func (c *Client) confDescription() string {
	conf, dir := sysregistriesv2.ConfigPath(c.sys), sysregistriesv2.ConfigDirPath(c.sys) //nolint:staticcheck // podman's wording
	if dir == "" || dir == noDropIns {
		return conf
	}
	return conf + " or " + dir
}

// listedInsecure reports whether Options.InsecureRegistries names domain.
func (c *Client) listedInsecure(domain string) bool {
	for _, h := range c.opts.InsecureRegistries {
		if strings.EqualFold(h, domain) {
			return true
		}
	}
	return false
}

// configuredInsecure reports whether the user marked host insecure as a
// registry or a mirror: Options.InsecureRegistries, or a registries.conf
// entry or mirror with `insecure = true` whose location is on host. It
// applies to hosts contacted on behalf of another endpoint (token servers,
// redirect targets); nothing learned at run time makes a host insecure.
func (c *Client) configuredInsecure(host string) bool {
	if c.listedInsecure(host) || (host == dockerHubAPIHost && c.listedInsecure("docker.io")) {
		return true
	}
	c.insecureOnce.Do(c.loadInsecureHosts)
	return c.insecureHosts[host]
}

func (c *Client) loadInsecureHosts() {
	c.insecureHosts = map[string]bool{}
	if c.sys == nil {
		return
	}
	regs, err := sysregistriesv2.GetRegistries(c.sys)
	if err != nil {
		return // loaded and checked by NewClient; an error here means none
	}
	hostOf := func(location string) string {
		h, _, _ := strings.Cut(location, "/")
		return apiHost(h)
	}
	for _, r := range regs {
		if r.Insecure && r.Location != "" {
			c.insecureHosts[hostOf(r.Location)] = true
		}
		for _, m := range r.Mirrors {
			if m.Insecure && m.Location != "" {
				c.insecureHosts[hostOf(m.Location)] = true
			}
		}
	}
}

// errRangesIgnored: a mirror answered range requests of a blob with the
// whole blob for longer than Options.MirrorWarmup.
var errRangesIgnored = errors.New("mirror answers range requests with the whole blob (HTTP 200)")

// endpointHealth is what the client remembers about endpoints that failed:
// hosts left out after failures of the endpoint as a whole, and endpoints
// left out for one blob.
type endpointHealth struct {
	mu sync.Mutex
	// down: host -> until when it is left out.
	down map[string]time.Time
	// skip: host/name@digest -> until when the endpoint is left out for
	// that blob.
	skip map[string]time.Time
	// whole: host/name@digest -> when the endpoint first answered a range
	// request of the blob with the whole blob (cleared by a 206).
	whole map[string]time.Time
}

// maxHealthEntries triggers a sweep of expired entries.
const maxHealthEntries = 4096

// objectKey names what ep was asked for: a blob or manifest digest, or
// "referrers/<digest>".
func objectKey(ep *endpoint, object string) string { return ep.host + "/" + ep.name() + "@" + object }

// usable reports whether ep is worth a try for object ("" for requests
// whose failures are not remembered, such as tags).
func (c *Client) usable(ep *endpoint, object string) bool {
	now := c.opts.Clock.Now()
	h := &c.health
	h.mu.Lock()
	defer h.mu.Unlock()
	if until, ok := h.down[ep.host]; ok {
		if now.Before(until) {
			return false
		}
		delete(h.down, ep.host)
	}
	if object != "" {
		k := objectKey(ep, object)
		if until, ok := h.skip[k]; ok {
			if now.Before(until) {
				return false
			}
			delete(h.skip, k)
		}
	}
	return true
}

// endpointFailure classifies the failure of a mirror: true when it is the
// endpoint's (unreachable, TLS, timeouts, 5xx, refused credentials), false
// when it concerns the object asked for (not found, wrong or incomplete
// data, ranges not served).
func endpointFailure(err error) bool {
	switch {
	case errors.Is(err, ErrNotFound), errors.Is(err, ErrDigestMismatch), errors.Is(err, ErrInvalidResponse),
		errors.Is(err, ErrTruncated), errors.Is(err, errRangesIgnored), errors.Is(err, ErrTooLarge),
		errors.Is(err, ErrUnsupported), errors.Is(err, ErrInvalidRange):
		return false
	}
	return true
}

// markFailed leaves a mirror out after err: the whole host for
// MirrorRetryAfter when the failure is the endpoint's, else the endpoint for
// object (when set) for MirrorSkipTTL.
func (c *Client) markFailed(ep *endpoint, object string, err error) {
	now := c.opts.Clock.Now()
	h := &c.health
	h.mu.Lock()
	defer h.mu.Unlock()
	if endpointFailure(err) {
		h.down[ep.host] = now.Add(c.opts.MirrorRetryAfter)
		return
	}
	if object == "" {
		return
	}
	if len(h.skip) >= maxHealthEntries {
		for k, until := range h.skip {
			if !now.Before(until) {
				delete(h.skip, k)
			}
		}
	}
	h.skip[objectKey(ep, object)] = now.Add(c.opts.MirrorSkipTTL)
}

// wholeBlobAllowed is asked when mirror ep answers a range request of dgst
// with the whole blob: it reports whether that answer may serve the read,
// which it may for MirrorWarmup after the first such answer (a pull-through
// cache answers so until it has stored the blob).
func (c *Client) wholeBlobAllowed(ep *endpoint, dgst digest.Digest) bool {
	if c.opts.MirrorWarmup <= 0 {
		return false
	}
	now := c.opts.Clock.Now()
	k := objectKey(ep, dgst.String())
	h := &c.health
	h.mu.Lock()
	defer h.mu.Unlock()
	first, ok := h.whole[k]
	if !ok {
		if len(h.whole) >= maxHealthEntries {
			for k, t := range h.whole {
				if now.Sub(t) >= c.opts.MirrorWarmup {
					delete(h.whole, k)
				}
			}
		}
		h.whole[k] = now
		return true
	}
	return now.Sub(first) < c.opts.MirrorWarmup
}

// rangesServed records that ep answered a range request of dgst with 206.
func (c *Client) rangesServed(ep *endpoint, dgst digest.Digest) {
	h := &c.health
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.whole, objectKey(ep, dgst.String()))
}

// onEndpoints runs op against the endpoints of ref in order until one
// succeeds, like podman tries mirrors before the primary location: a mirror
// that fails is logged and left out (see markFailed), and the next endpoint
// is asked. object names what is asked for (see objectKey; "" for tags).
// The error of the last endpoint is returned, with the mirrors' errors
// noted. Each endpoint gets one attempt; retries wrap the whole sequence.
func (c *Client) onEndpoints(ctx context.Context, ref reference.Named, actions []string, object, what string,
	op func(ctx context.Context, rc *repoClient) error) error {
	eps, err := c.endpoints(ref)
	if err != nil {
		return err
	}
	var mirrorErrs []string
	for i, ep := range eps {
		last := i == len(eps)-1
		if !last && !c.usable(ep, object) {
			continue
		}
		rc, err := c.repoOn(ctx, ep, actions, last)
		if err == nil {
			err = op(ctx, rc)
		}
		if err == nil {
			return nil
		}
		if last || ctx.Err() != nil {
			if len(mirrorErrs) > 0 {
				return fmt.Errorf("%w (mirrors also failed: %s)", err, strings.Join(mirrorErrs, "; "))
			}
			return err
		}
		c.markFailed(ep, object, err)
		c.stats.mirrorFallbacks.Add(1)
		c.logFallback(ep, eps[i+1:], object, what, err)
		mirrorErrs = append(mirrorErrs, fmt.Sprintf("[%s: %v]", ep.name(), err))
	}
	return errors.New("internal error: no endpoint tried")
}

// logFallback says that mirror ep failed and which endpoint is asked next:
// a warning, or an info line when the mirror just does not have the object.
func (c *Client) logFallback(ep *endpoint, rest []*endpoint, object, what string, err error) {
	next := rest[len(rest)-1]
	for _, e := range rest {
		if c.usable(e, object) {
			next = e
			break
		}
	}
	fields := logrus.Fields{"mirror": ep.name(), "next": next.name(), "request": what}
	if object != "" {
		fields["object"] = object
	}
	switch {
	case endpointFailure(err):
		fields["left_out_for"] = c.opts.MirrorRetryAfter.String()
	case object != "":
		fields["left_out_for"] = c.opts.MirrorSkipTTL.String() + " for this object"
	}
	l := c.log.WithFields(fields).WithError(err)
	switch {
	case errors.Is(err, errRangesIgnored):
		l.Warn("Registry mirror does not answer range requests (it sends the whole blob), skipping it for this blob")
	case errors.Is(err, ErrNotFound):
		l.Info("Not found at the registry mirror, trying the next endpoint")
	default:
		l.Warn("Registry mirror failed, trying the next endpoint")
	}
}
