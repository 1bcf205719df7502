//go:build !race

package imagegen

const raceEnabled = false
