package netproxy

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
)

// StatsHandler serves the counters: GET returns Stats as JSON (plus
// bytes_total, and the configured rate in bytes per second and RTT in
// milliseconds), POST to a path ending in /reset calls ResetStats.
func (p *Proxy) StatsHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/reset"):
			p.ResetStats()
			w.WriteHeader(http.StatusNoContent)
		case r.Method == http.MethodGet || r.Method == http.MethodHead:
			w.Header().Set("Content-Type", "application/json")
			s := p.Stats()
			_ = json.NewEncoder(w).Encode(struct {
				Stats
				Total int64   `json:"bytes_total"`
				Rate  int64   `json:"rate_bytes_per_sec"`
				RTTms float64 `json:"rtt_ms"`
			}{s, s.Bytes(), p.cfg.Rate, float64(p.cfg.RTT) / 1e6}) // a failed write means the client left
		default:
			http.Error(w, "GET for stats, POST .../reset to reset", http.StatusMethodNotAllowed)
		}
	})
}

// rateUnits maps rate suffixes to bytes per second.
var rateUnits = []struct {
	suffix string
	factor float64
}{
	// Longest suffixes first so that "kbit" is not read as "bit".
	{"gbit", 1e9 / 8}, {"mbit", 1e6 / 8}, {"kbit", 1e3 / 8}, {"bit", 1.0 / 8},
	{"gib", 1 << 30}, {"mib", 1 << 20}, {"kib", 1 << 10},
	{"gb", 1e9}, {"mb", 1e6}, {"kb", 1e3}, {"b", 1},
}

// ParseRate parses a bandwidth into bytes per second: a number with a unit
// of bits per second (bit, kbit, mbit, gbit; decimal, as in tc: "200mbit" is
// 25,000,000 bytes/s) or bytes per second (b, kb, mb, gb decimal; kib, mib,
// gib binary), case-insensitive, optionally followed by "/s". A bare number
// is bytes per second; "0" and "" mean unlimited.
func ParseRate(s string) (int64, error) {
	t := strings.TrimSuffix(strings.ToLower(strings.TrimSpace(s)), "/s")
	if t == "" {
		return 0, nil
	}
	factor := 1.0
	for _, u := range rateUnits {
		if num, ok := strings.CutSuffix(t, u.suffix); ok {
			t, factor = strings.TrimSpace(num), u.factor
			break
		}
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("%w: rate %q: want a number with bit, kbit, mbit, gbit, b, kb, mb, gb, kib, mib or gib", ErrConfig, s)
	}
	return int64(v * factor), nil
}
