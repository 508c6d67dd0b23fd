// Package ring is a single-producer, single-consumer lock-free byte ring on a mirrored buffer.
//
// It is for programs that stream bytes between two goroutines or two processes and want to
// hand the bytes to a parser, a hash or a system call without copying them and without a
// special case at the end of the buffer. The ring's n bytes are mapped twice, back to back
// (mirror.Mirror with mirror.Adjacent), so any window of up to n bytes that starts inside the
// ring is one contiguous slice even when it crosses the wrap point: WriteSlice and ReadSlice
// never split.
//
// # Three ways to use it
//
// As a byte stream: Write and Read (io.Writer, io.Reader, io.ReaderFrom, io.WriterTo), or
// zero-copy with WriteSlice/Commit and ReadSlice/Consume. Each Write publishes its bytes.
//
// As a buffered byte stream, for many small writes: NewWriter returns a Writer that copies
// straight into the ring and publishes every few kilobytes (or on Flush, or when the ring is
// full), the way bufio.Writer batches system calls; the consumer takes everything published
// in one ReadSlice and releases it with one Consume.
//
// As records, zero-copy on both sides: Reserve(n) returns n bytes in place for the producer
// to fill, Submit publishes every record reserved so far with one store; NextRecord returns
// the next record as one slice wherever it lies (the mirror makes a record that runs past the
// end contiguous), and ReadRecords hands every available record to a function and releases
// them all at once. Records are length-prefixed (8 bytes, payloads 8-byte aligned) and may be
// up to half the capacity (MaxRecord). This is the scheme of the kernel's BPF ring buffer,
// whose data pages are mapped twice for the same reason. A ring carries a stream or records,
// not both.
//
// # Capacity
//
// The capacity is the requested size rounded up to whole pages, since the kernel can only map
// pages twice. It need not be a power of two: a 3-page ring holds exactly 12288 bytes
// (on 4 KiB pages). Positions are kept in [0, 2n) and advanced with a compare and subtract,
// never with a mask, so they stay right for any n and never overflow, however many bytes pass.
//
// # Concurrency
//
// One goroutine (or process) produces: WriteSlice, Commit, Write, ReadFrom, a Writer, Reserve,
// Submit, CloseWrite. One consumes: ReadSlice, ReadSliceAtLeast, Consume, Read, WriteTo,
// NextRecord, Release, ReadRecords. Any goroutine may call Close, Len, Free, Cap and MaxRecord. The head (bytes written) and the tail (bytes consumed) are atomics
// on separate cache lines, and each side caches the other's index so that it touches the
// other side's cache line only when the ring looks full or empty.
//
// A side that must wait (a full ring for the producer, an empty one for the consumer) announces
// it in a flag, with how many bytes it waits for, and sleeps; the other side signals only when
// that flag is set and that many bytes are there, so a stream that never waits pays for no
// wake-ups and a side waiting for a large record is woken once, not at every Commit or Consume.
// In one process the sleep is a channel receive (the goroutine parks in the Go scheduler);
// between processes it is a futex on a word of the shared header (FUTEX_WAIT without
// FUTEX_PRIVATE_FLAG, so it works across address spaces with no extra file descriptor; an
// eventfd would have worked too, at the price of two more descriptors to pass and a read(2) and
// write(2) per wake-up). Before a futex sleep a side of a shared ring yields the processor a
// bounded number of times (64) re-checking the ring, because a futex sleep and wake-up cost
// several microseconds each way (BenchmarkWake: a futex round trip costs about 3 to 6 times a
// channel one on a 2-core machine, before the spin about 10 times). A side of a ring made by
// New yields once and looks again before it parks, which lets the two sides take turns on one
// processor without a wake-up; it does not spin longer: on a machine shared with other
// programs that cost more throughput than the wake-ups it saved (see spinTries and
// keepSpinning). Nothing sleeps for a fixed time.
//
// # Two processes
//
// NewShared puts the ring's header and data in two memfds; pass both to another process
// (exec.Cmd.ExtraFiles, or SCM_RIGHTS over a Unix socket) and call Attach there. Both memfds
// are sealed against shrinking, and Attach refuses files that are not, and a header whose
// magic, version, size or positions are not a ring's: neither process can truncate the ring
// under the other (whose next access would raise SIGBUS), and a position the other process
// wrote out of range is ErrCorrupt for the call that reads it, never a slice past the ring.
// Close in either process shuts the ring down for both: a side blocked in the other process wakes with
// ErrClosed. A process that dies without closing (killed, crashed) cannot tell anyone, so a
// side of a shared ring that waits wakes every 50 ms and looks at the other process through a
// pidfd: if it has exited, the call returns ErrPeerGone (what it published before dying can
// still be read). Both processes must be in one PID namespace, as a child started with
// exec.Cmd is.
//
// # Aliasing
//
// Byte i and byte i+n of the 2n view are the same memory. Compilers assume two different
// offsets of one slice are different bytes, so writing b[i] and reading b[i+n] of the 2n view in
// one function may be reordered. The slices this package hands out are at most n bytes long,
// so no byte appears in one twice, and the producer's and the consumer's slices never overlap:
// every access through them is safe. Do not keep the full 2n view and index it at both i and
// i+n between two synchronisation points (a Commit, a Consume, an atomic, a channel operation).
//
// # Lifetime
//
// A slice returned by WriteSlice or ReadSlice is valid until the next Commit or Consume of the
// same side; a record from Reserve until it is submitted; a record from NextRecord until the
// next NextRecord, ReadRecords or Release. None is valid after Close: Close waits for calls in
// progress on either side to return (a blocked call is woken and returns ErrClosed) and then
// unmaps the ring, so a goroutine that may be closed from another must not write into or read
// from such a slice once Close may have run. The calls themselves are safe against a Close
// from any goroutine: each tells Close it runs with a plain store, and Close makes every
// thread of the process execute a memory fence (membarrier(2)) before it looks, so a call
// pays no fenced instruction for it (see active.go).
package ring
