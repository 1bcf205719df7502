package remote

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
)

func TestMergeRanges(t *testing.T) {
	tests := []struct {
		in   []Range
		gap  int64
		want string
	}{
		{nil, 0, "[]"},
		{[]Range{{5, 0}}, 0, "[]"},
		{[]Range{{10, 5}, {0, 5}}, 0, "[0+5 10+5]"},
		{[]Range{{0, 5}, {5, 5}}, 0, "[0+10]"},                      // adjacent
		{[]Range{{0, 10}, {2, 3}}, 0, "[0+10]"},                     // contained
		{[]Range{{0, 10}, {8, 10}, {30, 1}}, 0, "[0+18 30+1]"},      // overlapping
		{[]Range{{0, 10}, {14, 1}}, 4, "[0+15]"},                    // within the gap
		{[]Range{{0, 10}, {15, 1}}, 4, "[0+10 15+1]"},               // beyond the gap
		{[]Range{{100, 1}, {0, 1}, {50, 1}}, 0, "[0+1 50+1 100+1]"}, // sorted
	}
	for _, tc := range tests {
		spans := mergeRanges(tc.in, tc.gap)
		var got []Range
		for _, s := range spans {
			got = append(got, s.Range)
		}
		if g := fmt.Sprint(got); g != tc.want && !(tc.want == "[]" && len(got) == 0) {
			t.Errorf("mergeRanges(%v, %d) = %s, want %s", tc.in, tc.gap, g, tc.want)
		}
	}
}

func TestParseContentRange(t *testing.T) {
	tests := []struct {
		in                 string
		first, last, total int64
		wantErr            bool
	}{
		{"bytes 0-9/100", 0, 9, 100, false},
		{"bytes 5-5/*", 5, 5, -1, false},
		{"  BYTES   10-19/20 ", 10, 19, 20, false},
		{"bytes 10-9/20", 0, 0, 0, true},
		{"bytes 10-20/20", 0, 0, 0, true}, // last beyond total
		{"bytes */20", 0, 0, 0, true},
		{"items 0-1/2", 0, 0, 0, true},
		{"bytes -1-5/10", 0, 0, 0, true},
		{"", 0, 0, 0, true},
	}
	for _, tc := range tests {
		first, last, total, err := parseContentRange(tc.in)
		if tc.wantErr {
			if !errors.Is(err, ErrInvalidResponse) {
				t.Errorf("parseContentRange(%q) error = %v, want ErrInvalidResponse", tc.in, err)
			}
			continue
		}
		if err != nil || first != tc.first || last != tc.last || total != tc.total {
			t.Errorf("parseContentRange(%q) = %d, %d, %d, %v; want %d, %d, %d", tc.in, first, last, total, err, tc.first, tc.last, tc.total)
		}
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
	}{
		{"", 0},
		{"7", 7 * time.Second},
		{"-3", 0},
		{"soon", 0},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second},
		{now.Add(-time.Hour).Format(http.TimeFormat), 0},
	}
	for _, tc := range tests {
		if got := parseRetryAfter(tc.in, now); got != tc.want {
			t.Errorf("parseRetryAfter(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestErrorMapping(t *testing.T) {
	tests := []struct {
		status    int
		codes     []string
		want      error
		temporary bool
	}{
		{404, nil, ErrNotFound, false},
		{400, []string{"MANIFEST_UNKNOWN"}, ErrNotFound, false},
		{401, nil, ErrUnauthorized, false},
		{403, []string{"DENIED"}, ErrUnauthorized, false},
		{400, []string{"UNSUPPORTED"}, ErrUnsupported, false},
		{429, []string{"TOOMANYREQUESTS"}, nil, true},
		{503, nil, nil, true},
		{501, nil, nil, false},
	}
	for _, tc := range tests {
		e := &Error{StatusCode: tc.status}
		for _, c := range tc.codes {
			e.Details = append(e.Details, ErrorDetail{Code: c})
		}
		for _, s := range []error{ErrNotFound, ErrUnauthorized, ErrUnsupported} {
			if got, want := errors.Is(e, s), s == tc.want; got != want {
				t.Errorf("errors.Is(%d %v, %v) = %v, want %v", tc.status, tc.codes, s, got, want)
			}
		}
		if e.Temporary() != tc.temporary {
			t.Errorf("(%d).Temporary() = %v, want %v", tc.status, e.Temporary(), tc.temporary)
		}
	}
}

func TestRedact(t *testing.T) {
	u, _ := url.Parse("https://user:pw@storage.test/a/b?X-Amz-Signature=abc&X-Amz-Credential=def#frag")
	if got, want := redactURL(u), "https://storage.test/a/b?REDACTED"; got != want {
		t.Errorf("redactURL = %q, want %q", got, want)
	}
	err := redactError(&url.Error{Op: "Get", URL: u.String(), Err: io.ErrUnexpectedEOF})
	if got := err.Error(); bytes.Contains([]byte(got), []byte("abc")) || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("redactError = %q, want no signature and the cause kept", got)
	}
}

func TestNextLinkAndReferrersTag(t *testing.T) {
	req, _ := http.NewRequest(http.MethodGet, "https://r.test/v2/a/referrers/sha256:1", nil)
	resp := &http.Response{Request: req, Header: http.Header{"Link": {`</v2/a/referrers/sha256:1?n=2&last=x>; rel="next"`}}}
	if got := nextLink(resp); got == nil || got.String() != "https://r.test/v2/a/referrers/sha256:1?n=2&last=x" {
		t.Errorf("nextLink = %v, want the absolute next page", got)
	}
	resp.Header.Set("Link", `<https://r.test/other>; rel="prev"`)
	if got := nextLink(resp); got != nil {
		t.Errorf("nextLink(rel=prev) = %v, want nil", got)
	}
	d := digest.FromString("x")
	if got, want := ReferrersTag(d), "sha256-"+d.Encoded(); got != want {
		t.Errorf("ReferrersTag = %q, want %q", got, want)
	}
}

// FuzzConsumePartial feeds arbitrary 206 answers to the range parser: it
// must never panic, and any success must cover the requested spans.
func FuzzConsumePartial(f *testing.F) {
	content := testContent(300)
	f.Add("multipart/byteranges; boundary=B", "", multipartBody(content, []Range{{10, 20}, {100, 5}}, "B", true))
	f.Add("application/octet-stream", "bytes 10-29/300", content[10:30])
	f.Add("multipart/byteranges; boundary=B", "", []byte("--B\r\nContent-Range: bytes 0-400/300\r\n\r\nxx\r\n--B--"))
	f.Fuzz(func(t *testing.T, contentType, contentRange string, body []byte) {
		spans := []*span{{Range: Range{10, 20}}, {Range: Range{100, 5}}}
		resp := &http.Response{
			StatusCode:    http.StatusPartialContent,
			Header:        http.Header{"Content-Type": {contentType}, "Content-Range": {contentRange}},
			Body:          io.NopCloser(bytes.NewReader(body)),
			ContentLength: -1,
		}
		if err := consumePartial(resp, spans, int64(len(content))); err == nil {
			for _, s := range spans {
				if s.covered() && len(s.buf) != int(s.Length) {
					t.Fatalf("span %s covered with a %d-byte buffer", s.Range, len(s.buf))
				}
			}
		}
	})
}
