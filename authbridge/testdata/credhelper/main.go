// Command credhelper is a docker credential helper for authbridge's tests.
// Built as docker-credential-<name>, it answers "get" from <name>.json next
// to the binary ({"<server>": {"Username": "...", "Secret": "..."}}) and
// appends every server it is asked for to <name>.log.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

func main() {
	if len(os.Args) != 2 || os.Args[1] != "get" {
		fmt.Fprintln(os.Stderr, "usage: docker-credential-NAME get")
		os.Exit(2)
	}
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	name := strings.TrimPrefix(filepath.Base(exe), "docker-credential-")
	base := filepath.Join(filepath.Dir(exe), name)
	server, _ := bufio.NewReader(os.Stdin).ReadString('\n')
	server = strings.TrimSpace(server)
	if f, err := os.OpenFile(base+".log", os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600); err == nil {
		fmt.Fprintln(f, server)
		f.Close()
	}
	var db map[string]struct{ Username, Secret string }
	raw, err := os.ReadFile(base + ".json")
	if err == nil {
		err = json.Unmarshal(raw, &db)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	c, ok := db[server]
	if !ok {
		fmt.Println("credentials not found in native keychain")
		os.Exit(1)
	}
	_ = json.NewEncoder(os.Stdout).Encode(map[string]string{"ServerURL": server, "Username": c.Username, "Secret": c.Secret})
}
