package main

import (
	"fmt"
	"html"
	"math"
	"strings"
)

// svg draws, per link, one horizontal bar per case: pull then first run,
// stacked, in seconds (medians), on a shared scale per link.
func (r *results) svg() string {
	const (
		width    = 980
		labelW   = 430
		barH     = 18
		gap      = 8
		panelPad = 44
	)
	type bar struct {
		label     string
		pull, run float64
	}
	type panel struct {
		title string
		bars  []bar
		max   float64
	}
	var panels []panel
	for _, link := range r.linkOrder() {
		p := panel{title: linkTitle(links[link])}
		for _, c := range caseNames {
			s, ok := r.stat(link, c)
			if !ok {
				continue
			}
			b := bar{label: caseLabels[c], pull: s.pull, run: s.run}
			if c == caseStockCold || c == caseCached || c == caseCachedAgain {
				b.pull = 0
			}
			p.bars = append(p.bars, b)
			p.max = math.Max(p.max, b.pull+b.run)
		}
		panels = append(panels, p)
	}
	height := 40
	for _, p := range panels {
		height += panelPad + len(p.bars)*(barH+gap) + 24
	}
	var s strings.Builder
	fmt.Fprintf(&s, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", width, height, width, height)
	fmt.Fprintf(&s, `<rect width="%d" height="%d" fill="white"/>`+"\n", width, height)
	fmt.Fprintf(&s, `<text x="10" y="20" font-size="15" font-weight="bold">%s</text>`+"\n", html.EscapeString("Pull + first run of python -c 'import numpy, pandas, scipy.stats' (seconds)"))
	fmt.Fprintf(&s, `<rect x="%d" y="9" width="12" height="12" fill="#4878a8"/><text x="%d" y="20">pull</text>`, width-170, width-154)
	fmt.Fprintf(&s, `<rect x="%d" y="9" width="12" height="12" fill="#e8923a"/><text x="%d" y="20">first run</text>`+"\n", width-110, width-94)
	y := 40
	for _, p := range panels {
		y += panelPad - 14
		fmt.Fprintf(&s, `<text x="10" y="%d" font-size="13" font-weight="bold">%s</text>`+"\n", y, html.EscapeString(p.title))
		y += 14
		plotW := float64(width - labelW - 80)
		scale := 0.0
		if p.max > 0 {
			scale = plotW / p.max
		}
		for _, b := range p.bars {
			fmt.Fprintf(&s, `<text x="%d" y="%d" text-anchor="end">%s</text>`+"\n", labelW-6, y+barH-5, html.EscapeString(b.label))
			x := float64(labelW)
			if b.pull > 0 {
				w := b.pull * scale
				fmt.Fprintf(&s, `<rect x="%.1f" y="%d" width="%.1f" height="%d" fill="#4878a8"><title>pull %.2f s</title></rect>`+"\n", x, y, w, barH, b.pull)
				x += w
			}
			w := b.run * scale
			fmt.Fprintf(&s, `<rect x="%.1f" y="%d" width="%.1f" height="%d" fill="#e8923a"><title>first run %.2f s</title></rect>`+"\n", x, y, w, barH, b.run)
			x += w
			fmt.Fprintf(&s, `<text x="%.1f" y="%d">%.1f s</text>`+"\n", x+4, y+barH-5, b.pull+b.run)
			y += barH + gap
		}
		fmt.Fprintf(&s, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#888"/>`+"\n", labelW, y-len(p.bars)*(barH+gap)-4, labelW, y)
		y += 24
	}
	s.WriteString("</svg>\n")
	return s.String()
}
