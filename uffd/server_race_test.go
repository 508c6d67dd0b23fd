//go:build race

package uffd

const raceEnabled = true
