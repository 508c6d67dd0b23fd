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
//  2. Pre-copy: the source streams every page while the workload keeps writing. The
//     destination's pager writes each page into the image's memfd.
//  3. Stop: the workload is stopped; Pair.Dirty lists the pages written since step 1, which
//     the destination must not take from the pre-copy. That list is all the source sends
//     before the destination resumes: the downtime is its cost, not the image's size.
//  4. Post-copy: the guest runs again at once. A fault on a page the pager holds is answered
//     at once (UFFDIO_CONTINUE maps the memfd's page); a fault on a dirty page not yet pushed
//     makes the pager fetch it from the source over the demand connection. Meanwhile the
//     source pushes the dirty pages and the pager maps every page it holds into the guest
//     without waiting for a fault; what was not pushed when the stream ends is pulled the same
//     way. (Config.Lazy: pages are mapped only on faults.)
//  5. The source sends the checksums of its final image; the guest checks every page of its
//     memory against them.
//
// A stop-and-copy migration of the same image (Mode StopAndCopy) is the baseline: stop, send
// everything, resume.
//
// # Two processes at the destination, and why the guest cannot hang
//
// A Go program must not serve its own userfaultfd faults with Go code: a goroutine that
// faults inside runtime assembly (copy, clear, bytes.Equal, hash functions, ...) cannot be
// stopped by the garbage collector, the collector's stop-the-world then waits for it for ever,
// and a Go fault handler in the same process (or a Go goroutine that fetches the page for a
// handler) never runs again. Post-copy cannot avoid that with a handler that serves from a
// file or a memfd alone (mirror's native and process handlers): a fault on a page that has not
// arrived must wait for the network, and the code that reads the network is Go.
//
// So the destination is two processes. The guest (the resumed workload) maps the image's
// memfd, registers its view with userfaultfd for missing and minor faults and hands the
// userfaultfd to its parent, the pager (uffd.SendFD). The pager holds the sockets to the
// source, writes every page it receives into the memfd through its own mapping (which is not
// registered), reads the guest's faults and resolves them with UFFDIO_CONTINUE, which maps a
// page of the memfd into the guest's view. Because the view is registered for minor faults
// (which also turns the kernel's fault-around off for it), a page the pager wrote is never
// visible to the guest until the pager maps it, and the pager maps a page only once its bytes
// are final.
//
// Why this cannot hang: resolving a guest fault needs only the pager and the source. The
// pager never touches registered memory, so its own collector never waits on a fault, and
// nothing it does waits for the guest; the guest's collector can be stopped by its faulting
// goroutines for as long as the pager takes, no longer. Works the same with and without cgo.
//
// # Failure
//
// A source that disappears mid-migration (its sockets close) or stops answering (a demand
// fetch has a timeout) makes the pager stop with an error saying what failed (the stream, or
// the fetch of a given page) and how many pages never arrived, and kill the guest. A page is
// never mapped as zeros in place of data: the guest keeps its own descriptor of the
// userfaultfd open until its end, so its faults stay registered whatever happens to the
// pager, and the guest is started with a parent-death signal (SIGKILL), so a pager that
// crashes takes its guest with it instead of leaving it waiting.
//
// # Processes
//
// Run starts the destination's pager by executing the running program again with an
// environment variable set, and the pager starts the guest the same way. A program (or test binary) that calls Run must call MaybeDestination first
// thing in main (or TestMain).
package migrate
