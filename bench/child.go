package main

import (
	"fmt"
	"os"
)

// Some rows run in a child process: the bench binary re-executed with childEnv set to the
// child's name. A child that hangs (the peer's handler polls forever and dies on the first
// error) is killed with its process and cannot hang the suite.
const (
	childEnv     = "MIRRORMEM_BENCH_CHILD"
	childArgsEnv = "MIRRORMEM_BENCH_ARGS"
)

// children maps a child's name to its main function; files add theirs in init.
var children = map[string]func(args string) int{}

func isChild() bool { return os.Getenv(childEnv) != "" }

func childMain() int {
	name := os.Getenv(childEnv)
	f, ok := children[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "bench child: unknown child %q in this build\n", name)
		return 2
	}
	return f(os.Getenv(childArgsEnv))
}
