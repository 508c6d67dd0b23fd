package migrate_test

import (
	"fmt"

	"github.com/mirrormem/mirrormem/examples/postcopy/migrate"
)

// Run migrates a 64 MiB image post-copy to a second process. The program must call
// migrate.MaybeDestination first thing in main: the destination is the program run again.
func ExampleRun() {
	rep, err := migrate.Run(migrate.Config{ImageSize: 64 << 20})
	if err != nil {
		fmt.Println("migration failed:", err)
		return
	}
	fmt.Println(rep)
}
