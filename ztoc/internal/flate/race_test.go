//go:build race

package flate

// raceEnabled thins out the slowest loops under the race detector.
const raceEnabled = true
