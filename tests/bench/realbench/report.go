package main

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// results is everything one run measured.
type results struct {
	Image   *image    `json:"image"`
	Recipe  recipe    `json:"recipe"`
	Started time.Time `json:"started"`
	Rows    []row     `json:"rows"`
}

// caseLabels are the table's names of the cases.
var caseLabels = map[string]string{
	caseStock:       "stock podman 4.3.1 (eager pull)",
	caseStockCold:   "stock, another container, page cache dropped",
	caseFirst:       "lazypull, first machine (index in the registry, prefetch off)",
	caseSecond:      "lazypull, second machine (index + start-up profile shared)",
	casePrefetch:    "lazypull, first machine, defaults (prefetch + verification on)",
	caseCached:      "lazypull, every span on disk, page cache dropped",
	caseCachedAgain: "lazypull, every span on disk, again (passthrough), page cache dropped",
	caseStargz:      "stargz-store v0.15.1, eStargz copy",
}

// linkOrder lists the links measured, in the order of the rows.
func (r *results) linkOrder() []string {
	var out []string
	seen := map[string]bool{}
	for _, x := range r.Rows {
		if !seen[x.Link] {
			seen[x.Link] = true
			out = append(out, x.Link)
		}
	}
	return out
}

// stat is a case's rows at one link: the median of each measure over
// rounds, and the range of the totals.
type stat struct {
	n                   int
	pull, run, total    float64
	minTotal, maxTotal  float64
	minRun, maxRun      float64
	pullBytes, runBytes int64
	rss                 int64
	note                string
}

func (r *results) stat(link, c string) (stat, bool) {
	var pulls, runs, totals []float64
	var pb, rb []int64
	s := stat{}
	for _, x := range r.Rows {
		if x.Link != link || x.Case != c {
			continue
		}
		pulls, runs, totals = append(pulls, x.Pull), append(runs, x.Run), append(totals, x.Pull+x.Run)
		pb, rb = append(pb, x.PullBytes), append(rb, x.RunBytes)
		s.rss = max(s.rss, x.PeakRSS)
		if x.Note != "" {
			s.note = x.Note
		}
	}
	if len(runs) == 0 {
		return s, false
	}
	s.n = len(runs)
	s.pull, s.run, s.total = median(pulls), median(runs), median(totals)
	s.minTotal, s.maxTotal = minMax(totals)
	s.minRun, s.maxRun = minMax(runs)
	s.pullBytes, s.runBytes = medianInt(pb), medianInt(rb)
	return s, true
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func medianInt(v []int64) int64 {
	f := make([]float64, len(v))
	for i, x := range v {
		f[i] = float64(x)
	}
	return int64(median(f))
}

func minMax(v []float64) (float64, float64) {
	lo, hi := v[0], v[0]
	for _, x := range v {
		lo, hi = min(lo, x), max(hi, x)
	}
	return lo, hi
}

func secs(v float64) string { return fmt.Sprintf("%.2f s", v) }

func mb(n int64) string { return fmt.Sprintf("%.1f MB", float64(n)/1e6) }

// markdown renders the tables and the goals.
func (r *results) markdown() string {
	var b strings.Builder
	img := r.Image
	fmt.Fprintf(&b, "## Real-distribution benchmark (%s)\n\n", r.Started.Format("2006-01-02 15:04 UTC"))
	fmt.Fprintf(&b, "Image: Debian %s minbase + `%s` (versions in packages.txt), SOURCE_DATE_EPOCH=%d; %d layers, %s gzip, %s eStargz, %.2f GB tar, %d files.\n",
		r.Recipe.Suite, strings.Join(r.Recipe.Packages, " "), r.Recipe.Epoch, len(img.Layers), mb(img.Compressed),
		mb(img.Estargzed), float64(img.Tar)/1e9, img.Files)
	fmt.Fprintf(&b, "Workload: `podman run --rm IMAGE %s` until it prints %q. Bytes: HTTP response bodies from the image and artifact registries (counting proxy), in MB (10^6).\n",
		strings.Join(quoteArgs(workload), " "), workloadOutput)
	for _, link := range r.linkOrder() {
		l := links[link]
		fmt.Fprintf(&b, "\n### %s\n\n", linkTitle(l))
		fmt.Fprintln(&b, "| case | pull | first run | pull + first run | bytes pull / run | daemon peak RSS | n |")
		fmt.Fprintln(&b, "|---|---:|---:|---:|---:|---:|---:|")
		for _, c := range caseNames {
			s, ok := r.stat(link, c)
			if !ok {
				continue
			}
			total := secs(s.total)
			if c == caseStockCold || c == caseCached || c == caseCachedAgain {
				total = "—"
			} else if s.n > 1 {
				total = fmt.Sprintf("%s (%.2f–%.2f)", total, s.minTotal, s.maxTotal)
			}
			run := secs(s.run)
			if s.n > 1 {
				run = fmt.Sprintf("%s (%.2f–%.2f)", run, s.minRun, s.maxRun)
			}
			pull, pb := secs(s.pull), mb(s.pullBytes)
			if c == caseStockCold || c == caseCached || c == caseCachedAgain {
				pull, pb = "—", "—"
			}
			rss := "—"
			if s.rss > 0 {
				rss = fmt.Sprintf("%.0f MB", float64(s.rss)/1e6)
			}
			label := caseLabels[c]
			if s.note != "" && c != caseStockCold && c != caseCached && c != caseCachedAgain {
				label += " — " + s.note
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s / %s | %s | %d |\n", label, pull, run, total, pb, mb(s.runBytes), rss, s.n)
		}
		b.WriteString("\n")
		if l.Rate == 0 {
			b.WriteString("Issue 12's goals are stated for the 200 Mbit/s link; here, for reference:\n\n")
		}
		for _, g := range r.goals(link) {
			fmt.Fprintf(&b, "- %s\n", g)
		}
	}
	b.WriteString("\nChart: results.svg. Medians over rounds; ranges in parentheses.\n")
	return b.String()
}

func quoteArgs(a []string) []string {
	out := make([]string, len(a))
	for i, s := range a {
		if strings.ContainsAny(s, " ;\"'") {
			s = "'" + s + "'"
		}
		out[i] = s
	}
	return out
}

func linkTitle(l link) string {
	if l.Rate == 0 {
		return l.Name + " (no emulated limit)"
	}
	return fmt.Sprintf("%s (%.0f Mbit/s, %s RTT)", l.Name, float64(l.Rate)*8/1e6, l.RTT)
}

func verdict(ok bool) string {
	if ok {
		return "**met**"
	}
	return "**missed**"
}

// goals states issue 12's goals at link with the measured ratios.
func (r *results) goals(link string) []string {
	l := links[link]
	var out []string
	stock, okStock := r.stat(link, caseStock)
	cold, okCold := r.stat(link, caseStockCold)
	first, okFirst := r.stat(link, caseFirst)
	second, okSecond := r.stat(link, caseSecond)
	pre, okPre := r.stat(link, casePrefetch)
	cached, okCached := r.stat(link, caseCached)
	peer, okPeer := r.stat(link, caseStargz)
	if okStock && okFirst && okSecond && l.Rate > 0 {
		// The bytes the run reads: what the first machine fetched for the
		// pull and the run (span granularity, no prefetch, no profile).
		need := first.pullBytes + first.runBytes
		bound := stock.run + 10*l.RTT.Seconds()
		if l.Rate > 0 {
			bound += float64(need) / float64(l.Rate)
		}
		g := fmt.Sprintf("second machine pull + first run %.2f s <= 1.3 x (stock warm run %.2f s + %s / link + 10 RTT = %.2f s): %.2fx %s",
			second.total, stock.run, mb(need), bound, second.total/bound, verdict(second.total <= 1.3*bound))
		out = append(out, g)
		if okPeer && l.Rate > 0 {
			// Stricter: the bytes of the files the run reads, as
			// stargz-store fetches them (file by file).
			strict := stock.run + 10*l.RTT.Seconds()
			if l.Rate > 0 {
				strict += float64(peer.pullBytes+peer.runBytes) / float64(l.Rate)
			}
			out = append(out, fmt.Sprintf("the same against the bytes of the files the run reads (stargz-store's %s): bound %.2f s, %.2fx %s",
				mb(peer.pullBytes+peer.runBytes), strict, second.total/strict, verdict(second.total <= 1.3*strict)))
		}
	}
	if okSecond && okPeer {
		out = append(out, fmt.Sprintf("second machine pull + first run vs stargz-store %.2f s: %.2fx %s", peer.total, second.total/peer.total, verdict(second.total < peer.total)))
	}
	if okStock && okFirst {
		x := stock.total / first.total
		out = append(out, fmt.Sprintf("first machine pull + first run %.2f s vs stock %.2f s: %.1fx faster (goal >= 6x) %s", first.total, stock.total, x, verdict(x >= 6)))
	}
	if okCold && okCached {
		x := cached.run / cold.run
		out = append(out, fmt.Sprintf("first run with every span on disk %.2f s vs stock overlay %.2f s (both page cache dropped): %.2fx (goal <= 1.2x) %s", cached.run, cold.run, x, verdict(x <= 1.2)))
	}
	if again, ok := r.stat(link, caseCachedAgain); ok && okCold {
		x := again.run / cold.run
		out = append(out, fmt.Sprintf("the same run again (files passed through) %.2f s vs stock overlay %.2f s: %.2fx (goal <= 1.05x) %s", again.run, cold.run, x, verdict(x <= 1.05)))
	}
	if okFirst && okPre {
		x := pre.run / first.run
		out = append(out, fmt.Sprintf("first run with prefetch on %.2f s vs off %.2f s: %.2fx (goal <= 1.1x) %s", pre.run, first.run, x, verdict(x <= 1.1)))
	}
	if okFirst {
		x := 100 * float64(first.pullBytes) / float64(r.Image.Compressed)
		out = append(out, fmt.Sprintf("pull bytes, index built here: %s = %.2f %% of the image (goal < 1 %%) %s", mb(first.pullBytes), x, verdict(x < 1)))
	}
	var rss int64
	for _, c := range []string{caseFirst, caseSecond, casePrefetch, caseCached} {
		if s, ok := r.stat(link, c); ok {
			rss = max(rss, s.rss)
		}
	}
	if rss > 0 {
		out = append(out, fmt.Sprintf("lazypull daemon peak RSS (VmHWM, all cases) %.0f MB (goal < 100 MB) %s", float64(rss)/1e6, verdict(rss < 100e6)))
	}
	return out
}
