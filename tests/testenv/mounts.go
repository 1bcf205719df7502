package testenv

import (
	"bufio"
	"fmt"
	"os"
	"strings"
)

// MountsBelow returns the mount points at or below dir in this process's
// mount namespace (to check that a program left nothing mounted).
func MountsBelow(dir string) ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("testenv: %w", err)
	}
	defer f.Close()
	var points []string
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 1<<20), 1<<20)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) < 5 {
			continue
		}
		if mp := unescapeMount(fields[4]); mp == dir || strings.HasPrefix(mp, dir+"/") {
			points = append(points, mp)
		}
	}
	if err := s.Err(); err != nil {
		return nil, fmt.Errorf("testenv: read mountinfo: %w", err)
	}
	return points, nil
}
