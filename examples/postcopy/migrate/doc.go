// Package migrate is a post-copy live-migration engine between two processes: the source holds
// a memory image that a workload keeps writing, the destination resumes on memory whose pages
// are served on demand from the source while the library's background push fills the rest.
//
// It is for people building live migration or snapshot restore on mirrored memory who want a
// working model to measure and copy, and for the benchmark suite (Run returns a Report).
//
// # How a migration goes
//
//  1. The source maps its image with mirror.ServeFaults(nil) and mirror.TrackWrites and starts
//     a dirty-tracking epoch (Pair.TrackDirty): every page the workload writes from then on is
//     recorded by a write-protect fault, served outside Go. It serves the image's pages with
//     mirror.ServePages (or over HTTP, Config.DemandOverHTTP).
//  2. Pre-copy: the source streams every page while the workload keeps writing. The
//     destination writes each page into its store, a memfd.
//  3. Stop: the workload is stopped; Pair.Dirty lists the pages written since step 1, which
//     the destination must not take from the pre-copy. That list is all the source sends
//     before the destination resumes: the downtime is its cost, not the image's size.
//  4. Post-copy: the destination's workload runs again at once, on memory whose faults the
//     library serves (below). A page the store holds is served from it; any other (a page
//     written after the pre-copy and not pushed yet) is fetched from the source's page server
//     with mirror.TCPSource, or with mirror.HTTPSource. Meanwhile the library pushes every
//     page the workload has not faulted in, from the same source, at a bounded rate
//     (mirror.Restore with Push and HoldPush): the destination starts that push
//     (Pair.StartPush) at the resume, once its store holds the pre-copy and the page states,
//     and waits for it (Pair.WaitResident). (Config.Lazy: pages come in on the workload's
//     faults only; Config.NoPush: on faults, then Pair.Populate's.)
//  5. The source sends the checksums of its final image; the destination checks every page
//     of its memory against them.
//
// A stop-and-copy migration of the same image (Mode StopAndCopy) is the baseline: stop, send
// everything, resume on the store.
//
// # Who serves the destination's faults, and why it cannot hang
//
// A Go program must not serve its own userfaultfd faults with Go code: a goroutine that
// faults inside runtime assembly (copy, clear, bytes.Equal, hash functions, ...) cannot be
// stopped by the garbage collector, whose stop-the-world then waits for it for ever, and a Go
// fault handler in the same process never runs again. Post-copy needs Go code on that path: a
// page that has not arrived must be fetched over the network.
//
// So the destination's memory is a mirror pair served by a source registered with
// mirror.RegisterSource (store.go): the library runs it in a handler process, the program
// re-executed, whose garbage collector stops only itself. The destination hands it, as the
// configuration, where its store is (/proc/PID/fd/N of the memfd) and where the source is. For
// a fault-around window, the handler process reads one byte per page after the image in the
// store: the runs of pages the store holds (pre-copied and still clean, or pushed) are read from
// it, the others from the source, one request per run; the push reads through the same
// source. The destination writes the page states into the store before it starts the push, so
// that a handler that sees a state reads final bytes.
// Works the same with and without cgo; the workload may touch its memory any way.
//
// # Failure
//
// A source that disappears mid-migration (its connections close) or stops answering (each
// request has a timeout) makes the destination fail with an error saying what failed: the
// stream, the background push, or a page that the handler process could not fetch. The library never serves zeros
// in place of such a page: it poisons it (UFFDIO_POISON), the access raises SIGBUS, which the
// destination's workload recovers as an error, and Pair.FaultErr says which read failed and
// why. A handler process that dies is replaced by its standby; if both die, the library ends
// the destination with a message rather than let it run on with pages it does not have.
//
// # Processes
//
// Run starts the destination by executing the running program again with an environment
// variable set; the library starts the destination's handler processes the same way. A
// program (or test binary) that calls Run must call MaybeDestination first thing in main (or
// TestMain), and import this package, whose init function registers the handler's source.
package migrate
