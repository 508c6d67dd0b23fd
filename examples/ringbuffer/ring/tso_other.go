//go:build !amd64

package ring

// tsoStores is false where the processor may make a plain store visible before earlier ones:
// publishing needs an atomic store there. See Ring.cheapPublish.
const tsoStores = false
