//go:build !race

package flate

const raceEnabled = false
