// Command ringbuffer streams a large checksummed payload through a mirrored ring buffer,
// first between two goroutines, then between two processes that share the ring through memfds,
// and prints the throughput and whether the checksums match. It exits non-zero if they do not.
//
//	go run ./examples/ringbuffer [-size BYTES] [-ring BYTES] [-mode both|goroutines|processes]
//
// The producer writes straight into the ring's free space (WriteSlice/Commit) and the consumer
// hashes straight out of it (WriteTo), so the payload is never copied into or out of a buffer
// of its own, and neither side ever deals with the wrap point. The ring's capacity is
// deliberately not a power of two. For the two-process run the program starts itself again as
// the consumer, with the ring's memfds as file descriptors 3 and 4.
package main

import (
	"errors"
	"flag"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/mirrormem/mirrormem/examples/ringbuffer/ring"
)

const consumerEnv = "MIRRORMEM_RINGBUFFER_CONSUMER"

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func main() {
	if os.Getenv(consumerEnv) != "" {
		if err := consumerProcess(os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "ringbuffer consumer:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "ringbuffer:", err)
		os.Exit(1)
	}
}

type options struct {
	size    int64
	ringCap int
	mode    string
	corrupt int64
}

func run(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("ringbuffer", flag.ContinueOnError)
	var o options
	fs.Int64Var(&o.size, "size", 4<<30, "payload bytes to stream in each run")
	// 1 MiB rather than ring.DefaultSize: here both sides hash every byte and the two-process
	// run wakes through futexes, and a larger ring makes the sides wait for each other less
	// (4 GiB between two processes: about 7 GiB/s with 1 MiB, 5 GiB/s with 256 KiB).
	fs.IntVar(&o.ringCap, "ring", 1<<20+3*4096, "ring size in bytes (rounded up to pages; need not be a power of two)")
	fs.StringVar(&o.mode, "mode", "both", "goroutines, processes or both")
	fs.Int64Var(&o.corrupt, "inject-corruption", -1, "flip the payload byte at this offset on the consumer side, to show that the check catches it")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if o.size <= 0 || o.ringCap <= 0 {
		return fmt.Errorf("-size %d and -ring %d must both be positive", o.size, o.ringCap)
	}
	var runs []func(options, io.Writer) error
	switch o.mode {
	case "both":
		runs = append(runs, goroutines, processes)
	case "goroutines":
		runs = append(runs, goroutines)
	case "processes":
		runs = append(runs, processes)
	default:
		return fmt.Errorf("-mode %q: want goroutines, processes or both", o.mode)
	}
	var failed []string
	for _, f := range runs {
		if err := f(o, out); err != nil {
			fmt.Fprintln(out, "  FAILED:", err)
			failed = append(failed, err.Error())
		}
	}
	if failed != nil {
		return errors.New(strings.Join(failed, "; "))
	}
	return nil
}

// pattern is the source of the payload: random bytes, read from a rotating offset so that the
// stream does not repeat with the ring's period.
type pattern struct {
	block []byte
	off   int
}

func newPattern(seed uint64) *pattern {
	rng := rand.New(rand.NewPCG(seed, seed^0x5bd1e995))
	b := make([]byte, 1<<20+4093)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return &pattern{block: b}
}

// fill writes the next len(b) payload bytes into b.
func (p *pattern) fill(b []byte) {
	for len(b) > 0 {
		k := copy(b, p.block[p.off:])
		b = b[k:]
		p.off = (p.off + k) % len(p.block)
	}
}

// produce writes size payload bytes into the ring in place and returns their checksum.
func produce(r *ring.Ring, size int64) (uint32, error) {
	p := newPattern(uint64(size))
	var sum uint32
	// Publish a quarter of the ring at a time at most, so that the consumer drains one part
	// while the producer fills the next: a producer that fills the whole ring before each Commit
	// leaves the two sides taking turns instead of running together.
	chunk := int64(max(1, r.Cap()/4))
	for left := size; left > 0; {
		s, err := r.WriteSlice(0)
		if err != nil {
			return 0, err
		}
		s = s[:min(int64(len(s)), left, chunk)]
		p.fill(s)
		sum = crc32.Update(sum, castagnoli, s)
		if err := r.Commit(len(s)); err != nil {
			return 0, err
		}
		left -= int64(len(s))
	}
	return sum, r.CloseWrite()
}

// checker hashes what the consumer receives, optionally corrupting one byte first.
type checker struct {
	h       hash.Hash32
	n       int64
	corrupt int64
}

func (c *checker) Write(p []byte) (int, error) {
	if c.corrupt >= c.n && c.corrupt < c.n+int64(len(p)) {
		q := append([]byte(nil), p...)
		q[c.corrupt-c.n] ^= 0x40
		c.h.Write(q)
	} else {
		c.h.Write(p)
	}
	c.n += int64(len(p))
	return len(p), nil
}

func consume(r *ring.Ring, corrupt int64) (int64, uint32, error) {
	c := &checker{h: crc32.New(castagnoli), corrupt: corrupt}
	n, err := r.WriteTo(c)
	return n, c.h.Sum32(), err
}

func report(out io.Writer, what string, size int64, d time.Duration, sent, got uint32, gotN int64) error {
	fmt.Fprintf(out, "%-11s %s in %v: %.2f GiB/s; crc32c sent %08x, received %08x over %d bytes: ",
		what, human(size), d.Round(time.Millisecond), float64(size)/d.Seconds()/(1<<30), sent, got, gotN)
	if sent != got || gotN != size {
		fmt.Fprintln(out, "MISMATCH")
		return fmt.Errorf("%s: payload corrupted (crc32c %08x sent, %08x received; %d of %d bytes)", what, sent, got, gotN, size)
	}
	fmt.Fprintln(out, "OK")
	return nil
}

func goroutines(o options, out io.Writer) error {
	r, err := ring.New(o.ringCap)
	if err != nil {
		return err
	}
	defer r.Close()
	fmt.Fprintf(out, "goroutines: ring of %d bytes (%d pages, mapped twice back to back)\n", r.Cap(), r.Cap()/os.Getpagesize())
	type result struct {
		sum uint32
		err error
	}
	done := make(chan result, 1)
	start := time.Now()
	go func() {
		sum, err := produce(r, o.size)
		if err != nil {
			r.Close() // wake the consumer: it must not wait for bytes that will never come
		}
		done <- result{sum, err}
	}()
	gotN, got, cerr := consume(r, o.corrupt)
	d := time.Since(start)
	res := <-done
	if res.err != nil {
		return fmt.Errorf("goroutines: producer: %w", res.err)
	}
	if cerr != nil {
		return fmt.Errorf("goroutines: consumer: %w", cerr)
	}
	return report(out, "goroutines:", o.size, d, res.sum, got, gotN)
}

func processes(o options, out io.Writer) error {
	r, err := ring.NewShared(o.ringCap, ring.Name("ringbuffer"))
	if err != nil {
		return err
	}
	defer r.Close()
	hf, df, err := r.Files()
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		hf.Close()
		df.Close()
		return err
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), consumerEnv+"=1", "MIRRORMEM_RINGBUFFER_CORRUPT="+strconv.FormatInt(o.corrupt, 10))
	cmd.ExtraFiles = []*os.File{hf, df}
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var stdout strings.Builder
	cmd.Stdout = &stdout
	start := time.Now()
	err = cmd.Start()
	hf.Close()
	df.Close()
	if err != nil {
		return fmt.Errorf("processes: start consumer: %w", err)
	}
	fmt.Fprintf(out, "processes:  ring of %d bytes in two memfds, consumer is pid %d\n", r.Cap(), cmd.Process.Pid)
	exited := make(chan error, 1)
	go func() {
		err := cmd.Wait()
		if err != nil {
			r.Close() // a dead consumer never consumes: wake the producer
		}
		exited <- err
	}()
	sent, perr := produce(r, o.size)
	werr := <-exited
	d := time.Since(start)
	if werr != nil {
		return fmt.Errorf("processes: consumer process: %v (producer: %v)", werr, perr)
	}
	if perr != nil {
		return fmt.Errorf("processes: producer: %w", perr)
	}
	var gotN int64
	var got uint32
	if _, err := fmt.Sscanf(stdout.String(), "%d %x", &gotN, &got); err != nil {
		return fmt.Errorf("processes: consumer printed %q: %v", stdout.String(), err)
	}
	return report(out, "processes:", o.size, d, sent, got, gotN)
}

// consumerProcess is the second process: it maps the ring from fds 3 and 4, hashes everything
// it receives and prints the byte count and checksum for the parent.
func consumerProcess(out io.Writer) error {
	r, err := ring.Attach(3, 4)
	if err != nil {
		return err
	}
	defer r.Close()
	os.NewFile(3, "ring-header").Close()
	os.NewFile(4, "ring-data").Close()
	corrupt, err := strconv.ParseInt(os.Getenv("MIRRORMEM_RINGBUFFER_CORRUPT"), 10, 64)
	if err != nil {
		corrupt = -1
	}
	n, sum, err := consume(r, corrupt)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(out, "%d %08x\n", n, sum)
	return err
}

func human(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%d bytes", n)
}
