package testenv

import (
	"bufio"
	"bytes"
	"io"
	"os"
	"strconv"
	"strings"
)

// FreeSubIDs returns the start, at floor or above, of 65536 subordinate IDs
// that no entry of /etc/subuid or /etc/subgid uses (for a rootless test
// user).
func FreeSubIDs(floor int) (int, error) {
	next := floor
	for _, f := range []string{"/etc/subuid", "/etc/subgid"} {
		b, err := os.ReadFile(f)
		if err != nil && !os.IsNotExist(err) {
			return 0, err
		}
		s := bufio.NewScanner(bytes.NewReader(b))
		for s.Scan() {
			parts := strings.Split(s.Text(), ":")
			if len(parts) != 3 {
				continue
			}
			a, err1 := strconv.Atoi(parts[1])
			n, err2 := strconv.Atoi(parts[2])
			if err1 == nil && err2 == nil && a+n > next {
				next = a + n
			}
		}
	}
	return next, nil
}

// CopyFile copies src to dst (created or truncated with mode), e.g. a
// binary into a directory a test user may execute from.
func CopyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
