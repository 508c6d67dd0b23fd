//go:build race

package mirror

// raceEnabled: the race detector slows copy() and comparisons of large buffers many times.
const raceEnabled = true
