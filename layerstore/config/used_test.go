package config

import (
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
)

// TestEveryKeyIsRead fails for a documented configuration key that no code
// reads: every leaf field of Config must be selected (".Section.Field", or
// ".Field" for top-level keys) in a non-test Go file of the module outside
// this package.
func TestEveryKeyIsRead(t *testing.T) {
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	var src strings.Builder
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if d.IsDir() {
			switch rel {
			case "vendor", ".git", filepath.Join("layerstore", "config"):
				return filepath.SkipDir
			}
			return nil
		}
		if strings.HasSuffix(p, ".go") && !strings.HasSuffix(p, "_test.go") {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			src.Write(b)
			src.WriteByte('\n')
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	code := src.String()
	for _, path := range leafFields(reflect.TypeOf(Config{}), "") {
		re := regexp.MustCompile(`\.` + strings.ReplaceAll(path, ".", `\.`) + `\b`)
		if !re.MatchString(code) {
			t.Errorf("configuration field %s is documented but never read", path)
		}
	}
}

// leafFields lists the dotted paths of the non-struct fields of t
// (ByteSize, CacheSize, Duration count as leaves).
func leafFields(t reflect.Type, prefix string) []string {
	var out []string
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		p := prefix + f.Name
		if f.Type.Kind() == reflect.Struct && f.Type.PkgPath() == t.PkgPath() && f.Type.Name() != "CacheSize" {
			out = append(out, leafFields(f.Type, p+".")...)
			continue
		}
		out = append(out, p)
	}
	return out
}

func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", os.ErrNotExist
		}
		dir = parent
	}
}
