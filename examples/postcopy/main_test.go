package main

import (
	"os"
	"testing"

	"github.com/mirrormem/mirrormem/examples/postcopy/migrate"
)

func TestMain(m *testing.M) {
	migrate.MaybeDestination()
	os.Exit(m.Run())
}

// TestProgram runs both migrations of the program on a small image; run verifies every page
// and fails otherwise.
func TestProgram(t *testing.T) {
	if err := run(8<<20, 100000, 256); err != nil {
		t.Fatal(err)
	}
}
