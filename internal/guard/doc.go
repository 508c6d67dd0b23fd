// Package guard ends the process loudly when a file descriptor hangs up, from a thread that
// the Go scheduler does not own.
//
// It is for this module's internal use: a program whose page faults are served by handler
// processes holds the read end of a pipe whose write ends only those processes hold. When the
// last handler dies the read end hangs up, and the program must stop with a message instead of
// waiting forever for pages nobody will serve.
//
// Why a thread outside the scheduler: a goroutine blocked in a userfaultfd page fault inside
// runtime assembly (copy, clear, bytes.Equal, ...) keeps its P and cannot be preempted. With as
// many such goroutines as GOMAXPROCS no goroutine of the process runs at all, so a watching
// goroutine would see the hang-up and never get to act. On linux/amd64 and linux/arm64 (Native
// is true) Start makes the thread itself with a raw clone(2), in cgo and non-cgo builds alike:
// the thread runs a few instructions of assembly that make only raw system calls (ppoll, write,
// exit_group, exit), with every signal blocked from its first instruction, on a stack in a
// mapping of its own; it never runs Go code and never touches Go memory. On other
// architectures Start falls back to a goroutine locked to its thread, which has exactly the
// weakness described above.
package guard
