package uffd_test

import (
	"errors"
	"fmt"
	"log"
	"runtime"

	"github.com/mirrormem/mirrormem/uffd"
)

// Serving memory of this same process, say how many goroutines may wait in faults at once:
// Serve refuses to start when GOMAXPROCS leaves the server no P of its own.
func ExampleWithFaultingGoroutines() {
	u, err := uffd.New()
	if err != nil {
		log.Fatal(err)
	}
	defer u.Close()
	procs := runtime.GOMAXPROCS(0)
	s := uffd.NewServer(u, uffd.WithFaultingGoroutines(procs))
	err = s.Serve(nil)
	fmt.Println(errors.Is(err, uffd.ErrStarved))
	// Output: true
}
