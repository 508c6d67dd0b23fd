// Package migrate is a post-copy live-migration engine between two processes: the source holds
// a memory image that a workload keeps writing, the destination resumes on an empty region
// whose pages are served on demand from the source while a background stream pushes the
// rest.
//
// It is for people building live migration or snapshot restore on mirrored memory who want a
// working model to measure and copy, and for the benchmark suite (Run returns a Report).
//
// # How a migration goes
//
//  1. The source maps its image with mirror.ServeFaults(nil) and mirror.TrackWrites and starts
//     a dirty-tracking epoch (Pair.TrackDirty): every page the workload writes from then on is
//     recorded by a write-protect fault, served outside Go.
//  2. Pre-copy: the source streams every page while the workload keeps writing.
//  3. Stop: the workload is stopped; Pair.Dirty lists the pages written since step 1, which
//     the destination must not take from the pre-copy. That list is all the source sends
//     before the destination resumes: the downtime is its cost, not the image's size.
//  4. Post-copy: the destination resumes at once on a region served by mirror.ServeFaults with
//     a Go source (a PageSource): a fault on a page it already holds is served locally, a
//     fault on a dirty page not yet pushed fetches it from the source over the demand
//     connection. Meanwhile the source pushes the dirty pages, and the destination installs
//     every page it holds with MADV_POPULATE_READ (a system call, safe under the Go collector;
//     Pair.Populate does the same for every view of a pair). What was not pushed when the
//     stream ends is pulled the same way, through faults that fetch it on demand.
//  5. The source sends the checksums of its final image; the destination checks every page.
//
// A stop-and-copy migration of the same image (Mode StopAndCopy) is the baseline: stop, send
// everything, resume.
//
// # The Go runtime
//
// The destination's pages are served by Go code (the PageSource reads a socket), so package
// mirror's rule applies: its workload touches pages that may be unfilled with plain Go loops
// only, and everything else goes through MADV_POPULATE_READ. Checksums (runtime assembly) are computed
// only once every page is resident. The program must be built with cgo (mirror's watchdog);
// with CGO_ENABLED=0 mirror refuses a Go source and Run says so.
//
// # Failure
//
// A source that disappears mid-migration (its sockets close) makes the destination stop with
// an error saying what failed (the stream, or the fetch of a given page) and how many pages
// never arrived. A page is never mapped as zeros in place of
// data: the fault server keeps a fault it cannot serve blocked, and the destination process
// exits with the error.
//
// # Processes
//
// Run starts the destination by executing the running program again with an environment
// variable set. A program (or test binary) that calls Run must call MaybeDestination first
// thing in main (or TestMain).
package migrate
