// Package blockinit is imported by the tests of package fault only: its init function, which
// runs before fault's (a dependency initialises first), blocks forever in a re-executed handler
// process when FAULT_TEST_BLOCK_INIT is set, as a misbehaving init function of a program would.
package blockinit

import (
	"os"

	"golang.org/x/sys/unix"
)

func init() {
	if os.Getenv("FAULT_TEST_BLOCK_INIT") != "" && os.Getenv("MIRRORMEM_FAULT_HANDLER") != "" {
		for {
			unix.Ppoll(nil, nil, nil) // no descriptors, no timeout: wait in the kernel forever
		}
	}
}
