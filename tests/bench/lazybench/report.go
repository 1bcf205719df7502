package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"sort"
	"time"
)

func log(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

func size(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func runCmd(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}

func listTags(registryURL, repo string) ([]string, error) {
	resp, err := http.Get(registryURL + "/v2/" + repo + "/tags/list")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var out struct {
		Tags []string `json:"tags"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return nil, err
	}
	return out.Tags, nil
}

// report prints the results as a markdown table per profile, with the
// ratios the goals are stated in.
func report(results []result) {
	for _, r := range results {
		p := r.Profile
		link := "unlimited"
		if p.Rate > 0 {
			link = fmt.Sprintf("%.0f Mbit/s", float64(p.Rate)*8/1e6)
		}
		fmt.Printf("\n### %s (%s, +%s RTT); image %s compressed, workload reads %s of files\n\n", p.Name, link, p.RTT, size(r.ImageBytes), size(r.WorkloadBytes))
		fmt.Println("| case | pull | first output | bytes over the link (pull / workload) |")
		fmt.Println("|---|---|---|---|")
		fmt.Printf("| stock podman | %.2f s | %.2f s | %s / %s |\n", r.StockPull.Seconds, r.StockFirstOut.Seconds, size(r.StockPull.Bytes), size(r.StockFirstOut.Bytes))
		fmt.Printf("| lazypull, indexed image | %.2f s | %.2f s | %s / %s |\n", r.LazyPull.Seconds, r.LazyFirstOut.Seconds, size(r.LazyPull.Bytes), size(r.LazyFirstOut.Bytes))
		fmt.Printf("| lazypull, indexed image, defaults (background prefetch on) | %.2f s | %.2f s | %s / %s (prefetch included) |\n", r.DefaultsPull.Seconds, r.DefaultsFirst.Seconds, size(r.DefaultsPull.Bytes), size(r.DefaultsFirst.Bytes))
		fmt.Printf("| lazypull, cold (indexed while pulling) | %.2f s | | %s |\n", r.ColdPull.Seconds, size(r.ColdPull.Bytes))
		fmt.Printf("| lazypull, second machine (shared index) | %.2f s | %.2f s | %s / %s |\n", r.SecondPull.Seconds, r.SecondFirstOut.Seconds, size(r.SecondPull.Bytes), size(r.SecondFirstOut.Bytes))
		fmt.Println()
		fmt.Printf("- lazy pull speed-up: %.1fx (goal >= 10x, aim 20x)\n", r.StockPull.Seconds/r.LazyPull.Seconds)
		fmt.Printf("- cold lazy pull / stock pull: %.2fx (goal <= 1.0x)\n", r.ColdPull.Seconds/r.StockPull.Seconds)
		fmt.Printf("- second-machine speed-up: %.1fx (goal >= 10x)\n", r.StockPull.Seconds/r.SecondPull.Seconds)
		if p.Rate > 0 {
			ideal := float64(r.LazyFirstOut.Bytes)/float64(p.Rate) + r.LazyPull.Seconds
			fmt.Printf("- pull + first output vs bytes the workload needs / bandwidth + pull time (%.2f s): prefetch off %.2f s = %.2fx, defaults %.2f s = %.2fx (goal <= 1.5x; container start alone takes %.2f s with stock podman)\n",
				ideal, r.LazyPull.Seconds+r.LazyFirstOut.Seconds, (r.LazyPull.Seconds+r.LazyFirstOut.Seconds)/ideal,
				r.DefaultsPull.Seconds+r.DefaultsFirst.Seconds, (r.DefaultsPull.Seconds+r.DefaultsFirst.Seconds)/ideal, r.StockFirstOut.Seconds)
			fmt.Printf("- prefetch: %s in %.2f s = %.1f MB/s, %.0f %% of the link (goal >= 80 %%)\n",
				size(r.Prefetch.Bytes), r.Prefetch.Seconds, float64(r.Prefetch.Bytes)/r.Prefetch.Seconds/1e6,
				100*float64(r.Prefetch.Bytes)/r.Prefetch.Seconds/float64(p.Rate))
		} else {
			fmt.Printf("- prefetch: %s in %.2f s = %.1f MB/s\n", size(r.Prefetch.Bytes), r.Prefetch.Seconds, float64(r.Prefetch.Bytes)/r.Prefetch.Seconds/1e6)
		}
		fmt.Printf("- daemon peak RSS: %s lazy pull + workload, %s with prefetch, %s cold pull (goal < 150 MB)\n", size(r.LazyPeakRSS), size(r.DefaultsRSS), size(r.ColdPeakRSS))
	}
}
