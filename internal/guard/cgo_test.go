//go:build cgo

package guard

// With cgo enabled the test binary links the cgo runtime, so that every test also runs in a
// program whose threads the C library creates and knows (the guard's thread it does not know).
import _ "runtime/cgo"
