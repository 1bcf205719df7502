// Command testregistry runs a registry on loopback for benchmark scripts,
// pushes generated test images into it and serves until SIGINT or SIGTERM.
//
//	testregistry -push e2e,bench1g -info /tmp/registry.json
//
// It prints (and with -info writes) a JSON description once ready:
// {"host": "127.0.0.1:PORT", "url": "http://...", "images": [{"preset": "e2e",
// "ref": "127.0.0.1:PORT/lazypull/e2e:latest", ...}]}. Images come from the
// image cache (tests/imagegen.Cached), so only the first run generates them.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/lazypull/lazypull/tests/imagegen"
	"github.com/lazypull/lazypull/tests/testenv"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "testregistry:", err)
		os.Exit(1)
	}
}

type image struct {
	Preset         string  `json:"preset"`
	Ref            string  `json:"ref"`
	ManifestDigest string  `json:"manifest_digest"`
	CompressedSize int64   `json:"compressed_size"`
	Layout         string  `json:"layout"`
	PushSeconds    float64 `json:"push_seconds"`
}

type info struct {
	Host   string  `json:"host"`
	URL    string  `json:"url"`
	Dir    string  `json:"dir"`
	Images []image `json:"images"`
}

func run() error {
	inProcess := flag.Bool("in-process", false, "serve go-containerregistry's registry instead of running docker-registry")
	dir := flag.String("dir", "", "registry storage directory (default: a temporary one, removed on exit)")
	push := flag.String("push", "", "comma-separated presets to push: small, e2e, bench1g")
	repo := flag.String("repo", "lazypull", "repository prefix; images go to <repo>/<preset>")
	tag := flag.String("tag", "latest", "tag of the pushed images")
	infoFile := flag.String("info", "", "also write the JSON description to this file")
	flag.Parse()

	reg, err := testenv.NewRegistry(testenv.RegistryOptions{InProcess: *inProcess, Dir: *dir})
	if err != nil {
		return err
	}
	defer reg.Close()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	out := info{Host: reg.Host, URL: reg.URL, Dir: reg.Dir}
	for _, name := range strings.Split(*push, ",") {
		if name = strings.TrimSpace(name); name == "" {
			continue
		}
		o, err := imagegen.Preset(name)
		if err != nil {
			return err
		}
		img, err := imagegen.Cached(imagegen.CacheDir(), o)
		if err != nil {
			return err
		}
		start := time.Now()
		repoName := *repo + "/" + strings.ToLower(name)
		if _, err := testenv.Push(ctx, reg.URL, repoName, *tag, img.Dir); err != nil {
			return err
		}
		out.Images = append(out.Images, image{
			Preset: name, Ref: reg.Ref(repoName, *tag), ManifestDigest: img.ManifestDigest.String(),
			CompressedSize: img.CompressedSize(), Layout: img.Dir, PushSeconds: time.Since(start).Seconds(),
		})
	}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return err
	}
	fmt.Println(string(b))
	if *infoFile != "" {
		if err := os.WriteFile(*infoFile, append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	<-ctx.Done()
	return reg.Close()
}
