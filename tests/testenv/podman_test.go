package testenv

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/lazypull/lazypull/tests/imagegen"
)

// TestPodmanPullMatchesExpectedTree proves that generator, registry, pusher,
// podman harness and tree comparison agree before other tests rely on them:
// a generated image pushed to a real registry and pulled by stock podman
// (no lazypull) shows exactly the tree the generator expects, and busybox
// runs in it.
func TestPodmanPullMatchesExpectedTree(t *testing.T) {
	requireRoot(t)
	tests := []struct {
		name      string
		inProcess bool
		adjust    func(*imagegen.Options)
		emptyALS  bool // configure an empty additional layer store: podman must fall back to a full pull
	}{
		{"oci-gzip/docker-registry", false, nil, false},
		{"oci-zstd-uncompressed/docker-registry", false, func(o *imagegen.Options) {
			o.Layers[1].Compression = imagegen.Zstd
			o.Layers[2].Compression = imagegen.Uncompressed
		}, false},
		{"docker-schema2/docker-registry", false, func(o *imagegen.Options) { o.MediaTypes = imagegen.Docker }, false},
		{"oci-gzip/in-process", true, nil, false},
		{"oci-gzip/empty-layer-store", false, nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			step := func(name string) {
				t.Logf("%s done after %v", name, time.Since(start).Round(time.Millisecond))
			}
			variant := "small" // the unchanged preset is generated once for all its cases
			if tc.adjust != nil {
				variant = strings.ReplaceAll(tc.name, "/", "-")
			}
			img := smallImage(t, variant, tc.adjust)
			want, err := img.ExpectedTree()
			if err != nil {
				t.Fatal(err)
			}
			reg := StartRegistry(t, RegistryOptions{InProcess: tc.inProcess})
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			dgst, err := Push(ctx, reg.URL, "test/small", "v1", img.Dir)
			if err != nil {
				t.Fatalf("Push: %v", err)
			}
			if dgst != img.ManifestDigest {
				t.Errorf("Push returned %s, want manifest digest %s", dgst, img.ManifestDigest)
			}

			step("generate, registry, push")
			popts := PodmanOptions{InsecureRegistries: []string{reg.Host}}
			if tc.emptyALS {
				popts.StorageOpts = []string{"overlay.additionallayerstore=" + t.TempDir() + ":ref"}
			}
			pm := NewPodman(t, popts)
			ref := reg.Ref("test/small", "v1")
			if _, err := pm.Pull(ref); err != nil {
				t.Fatalf("Pull: %v", err)
			}
			step("pull")
			mnt, err := pm.ImageMount(ref)
			if err != nil {
				t.Fatalf("ImageMount: %v", err)
			}
			CheckTree(t, want, mnt)
			if err := pm.ImageUnmount(ref); err != nil {
				t.Errorf("ImageUnmount: %v", err)
			}

			step("mount, compare, unmount")
			out, _, err := pm.RunContainer(ref, "sha256sum", "/bin/busybox")
			if err != nil {
				t.Fatalf("RunContainer: %v", err)
			}
			if got, wantSum := strings.Fields(out + " ")[0], want["bin/busybox"].SHA256; got != wantSum {
				t.Errorf("sha256sum /bin/busybox in a container = %q, want %q", got, wantSum)
			}
			step("run")
		})
	}
}
