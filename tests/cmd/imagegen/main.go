// Command imagegen writes a deterministic test image (an OCI image layout)
// from a preset of package tests/imagegen and prints a JSON summary.
//
//	imagegen -preset e2e -out /tmp/e2e          # generate into a new directory
//	imagegen -preset bench1g -cache             # reuse or fill the image cache
//	imagegen -preset small -docker -zstd-layer 2 -out /tmp/small-docker
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/lazypull/lazypull/tests/imagegen"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "imagegen:", err)
		os.Exit(1)
	}
}

type summary struct {
	Dir            string           `json:"dir"`
	Preset         string           `json:"preset"`
	Key            string           `json:"key"`
	ManifestDigest string           `json:"manifest_digest"`
	CompressedSize int64            `json:"compressed_size"`
	DiffSize       int64            `json:"diff_size"`
	Paths          int              `json:"paths"`
	Seconds        float64          `json:"seconds"`
	Layers         []imagegen.Layer `json:"layers"`
}

func run() error {
	preset := flag.String("preset", "small", "preset: small, e2e or bench1g")
	out := flag.String("out", "", "layout directory to create (must not exist or be empty)")
	cache := flag.Bool("cache", false, "use the image cache ($LAZYPULL_TESTIMAGES or "+imagegen.DefaultCacheDir+") instead of -out")
	seed := flag.Uint64("seed", 0, "seed (default: the preset's)")
	docker := flag.Bool("docker", false, "Docker schema2 media types instead of OCI")
	compression := flag.String("compression", "", "compression of every layer: gzip, gzip-parallel, gzip-multimember, zstd, none (default: the preset's)")
	huge := flag.Int64("huge", 0, "add a file of this many zero bytes to the top layer (e.g. 4831838208 for 4.5 GiB)")
	busybox := flag.String("busybox", "", "static busybox to copy (default "+imagegen.DefaultBusybox+")")
	flag.Parse()

	o, err := imagegen.Preset(*preset)
	if err != nil {
		return err
	}
	if *seed != 0 {
		o.Seed = *seed
	}
	if *docker {
		o.MediaTypes = imagegen.Docker
	}
	if *compression != "" {
		for i := range o.Layers {
			o.Layers[i].Compression = imagegen.Compression(*compression)
		}
	}
	if *huge > 0 {
		top := &o.Layers[len(o.Layers)-1]
		top.Zeros = append(top.Zeros, *huge)
	}
	o.Busybox = *busybox
	if *seed != 0 || *docker || *compression != "" || *huge > 0 {
		o.Name = fmt.Sprintf("%s-custom", o.Name) // keep the preset's cache entry
	}

	start := time.Now()
	var img *imagegen.Image
	switch {
	case *cache:
		img, err = imagegen.Cached(imagegen.CacheDir(), o)
	case *out != "":
		img, err = imagegen.Generate(*out, o)
	default:
		return errors.New("give -out DIR or -cache")
	}
	if err != nil {
		return err
	}
	tree, err := img.ExpectedTree()
	if err != nil {
		return err
	}
	s := summary{
		Dir: img.Dir, Preset: *preset, Key: img.Key, ManifestDigest: img.ManifestDigest.String(),
		CompressedSize: img.CompressedSize(), DiffSize: img.DiffSize(), Paths: len(tree),
		Seconds: time.Since(start).Seconds(), Layers: img.Layers,
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(s)
}
