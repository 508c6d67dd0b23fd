// Package gcstress forces garbage collections in a loop, for tests that must show a program
// does not hang (or lose data) while the collector stops the world over and over. It is for
// this module's tests and examples only.
package gcstress

import (
	"runtime"
	"sync"
)

// Loop starts a goroutine that calls runtime.GC back to back until the returned function is
// called; that function stops the loop and waits for the goroutine to return.
func Loop() (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			default:
				runtime.GC()
			}
		}
	}()
	var once sync.Once
	return func() { once.Do(func() { close(done); wg.Wait() }) }
}
