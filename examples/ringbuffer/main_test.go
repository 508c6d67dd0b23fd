package main

import (
	"os"
	"strings"
	"testing"
)

func TestMain(m *testing.M) {
	if os.Getenv(consumerEnv) != "" { // the program's second process, run from this test binary
		if err := consumerProcess(os.Stdout); err != nil {
			os.Stderr.WriteString(err.Error() + "\n")
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestProgramVerifies(t *testing.T) {
	var out strings.Builder
	if err := run([]string{"-size", "48000000", "-ring", "40000"}, &out); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	if got := strings.Count(out.String(), ": OK"); got != 2 {
		t.Fatalf("want two verified runs, got:\n%s", out.String())
	}
	t.Log("\n" + out.String())
}

// TestProgramCatchesCorruption: one flipped byte on the consumer side must fail both runs.
func TestProgramCatchesCorruption(t *testing.T) {
	var out strings.Builder
	err := run([]string{"-size", "3000000", "-inject-corruption", "1234567"}, &out)
	if err == nil {
		t.Fatalf("a corrupted payload passed:\n%s", out.String())
	}
	if got := strings.Count(out.String(), "MISMATCH"); got != 2 {
		t.Fatalf("want two mismatches reported, got:\n%s", out.String())
	}
}

func TestProgramRejectsBadFlags(t *testing.T) {
	for _, args := range [][]string{{"-size", "0"}, {"-ring", "-5"}, {"-mode", "threads"}} {
		if err := run(args, &strings.Builder{}); err == nil {
			t.Errorf("run(%q) succeeded", args)
		}
	}
}
