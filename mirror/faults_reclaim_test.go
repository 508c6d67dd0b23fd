package mirror

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mirrormem/mirrormem/alloc"
	"github.com/mirrormem/mirrormem/internal/fault"
	"github.com/mirrormem/mirrormem/internal/gcstress"
	"github.com/mirrormem/mirrormem/internal/mem"
)

// envReclaim runs one case of TestGoHandlerAfterReclaim in a child process.
const envReclaim = "MIRRORMEM_TEST_RECLAIM"

// With the server in this process (HandlerGo), a filled page can still fault: reclaim unmaps
// shared memory without freeing it (kswapd, DAMON, MADV_PAGEOUT: with no swap the page stays in
// the page cache), and the next touch through a view registered for minor faults waits for the
// Go server. Touched inside runtime assembly while the collector waits, that is the deadlock of
// the package doc, for a program that followed its rule (Populate, then copy). Each case runs in
// a child process.
//   - "reclaimed": pages populated, then unmapped from both views (MADV_PAGEOUT, as reclaim
//     does, and MADV_DONTNEED), then compared with bytes.Equal at GOMAXPROCS
//     1: the goroutine that faults holds the only P, so a fault inside runtime assembly stops
//     Go code for certain, as the collector does by chance. The watchdog must map the pages
//     (FaultStats.Rescued), not abort.
//   - "verify": Verify after Reset and a refill through the mirror (the original's pages are
//     filled but unmapped), 100 times while garbage is collected back to back, must compare
//     with plain loops, which the collector can interrupt, so that the Go server serves those
//     faults and the watchdog has nothing to rescue.
func TestGoHandlerAfterReclaim(t *testing.T) {
	if !fault.NativeAvailable {
		t.Skip("HandlerGo and its watchdog need cgo")
	}
	if !minorShmem(t) {
		t.Skip("the views fault again after reclaim only when registered for minor faults on shmem (Linux 5.14)")
	}
	if c := os.Getenv(envReclaim); c != "" {
		reclaimChild(t, c)
		return
	}
	for _, c := range []string{"reclaimed", "verify"} {
		t.Run(c, func(t *testing.T) {
			out, err := runChild("TestGoHandlerAfterReclaim", []string{envReclaim + "=" + c}, 2*time.Minute)
			if errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("the child hung:\n%s", out)
			}
			if err != nil || strings.Contains(string(out), "DEADLOCK") {
				t.Fatalf("%v:\n%s", err, out)
			}
			if !strings.Contains(string(out), "CHECKED") {
				t.Fatalf("the child skipped or did not check:\n%s", out)
			}
		})
	}
}

func reclaimChild(t *testing.T, c string) {
	const npages = 64
	n := npages * alloc.PageSize()
	f, data := patternFile(t, n)
	src := bytes.NewReader(data) // Go code: only HandlerGo serves it
	f.Close()
	r := shared(t, n)
	p, closePair := mirrored(t, r, ServeFaults(src), WithHandler(HandlerGo), Watchdog(20*time.Second))
	defer closePair()
	switch c {
	case "reclaimed":
		if err := p.Populate(0, n); err != nil {
			t.Fatal(err)
		}
		// Reclaim skips pages mapped more than once, so the mirror's go first; it also skips
		// pages it cannot isolate at that moment, so Discard takes any it left.
		if err := p.Discard(1, 0, n); err != nil {
			t.Fatal(err)
		}
		if err := mem.Madvise(mem.Ptr(p.Original()), uintptr(n), unix.MADV_PAGEOUT); err != nil {
			t.Skipf("MADV_PAGEOUT (Linux 5.4): %v", err)
		}
		paged := npages - mapped(t, p.Original())
		if err := p.Discard(0, 0, n); err != nil {
			t.Fatal(err)
		}
		if k, m := mapped(t, p.Original()), mapped(t, p.Mirror()); k != 0 || m != 0 {
			t.Fatalf("after MADV_PAGEOUT and Discard, %d and %d pages are still mapped", k, m)
		}
		fmt.Printf("MADV_PAGEOUT unmapped %d of %d pages\n", paged, npages)
		var same bool
		atOneP(func() { same = bytes.Equal(p.Original(), data) && bytes.Equal(p.Mirror(), data) }) // runtime assembly
		if !same {
			t.Fatal("the views differ from the source after the rescue")
		}
		o, m := p.FaultStats()
		if o.Rescued == 0 || o.Rescued+m.Rescued > 2*npages {
			t.Errorf("rescued %d pages in the original and %d in the mirror; want some, at most %d in all", o.Rescued, m.Rescued, 2*npages)
		}
		fmt.Printf("rescued %d + %d pages\n", o.Rescued, m.Rescued)
	case "verify":
		// Verify reads every filled page of every view; after a Reset and a refill through
		// the mirror, the original's pages fault (minor) as it reads them. Garbage is
		// collected back to back meanwhile: a fault inside runtime assembly would stop Go code
		// until the watchdog rescued it.
		loopSum(p.Original())
		loopSum(p.Mirror())
		stop := gcstress.Loop()
		var err error
		for i := 0; i < 100 && err == nil; i++ {
			if err = p.Reset(0, n/2); err != nil {
				break
			}
			loopSum(p.Mirror()[:n/2])
			if k := mapped(t, p.Original()[:n/2]); k != 0 {
				err = fmt.Errorf("after Reset and the refill, %d pages of the original are mapped", k)
				break
			}
			err = p.Verify()
		}
		stop()
		if err != nil {
			t.Fatal(err)
		}
		o, m := p.FaultStats()
		if o.Rescued != 0 || m.Rescued != 0 {
			t.Errorf("the watchdog rescued %d + %d pages: Verify stopped Go code with a fault inside runtime assembly", o.Rescued, m.Rescued)
		}
		if o.Minor == 0 || o.Mapped < 100*npages/2 {
			t.Errorf("original %+v: want minor faults mapping at least %d pages (those Verify read after each refill)", o, 100*npages/2)
		}
	}
	if err := p.Verify(); err != nil {
		t.Error(err)
	}
	fmt.Println("CHECKED")
}

// atOneP runs f with GOMAXPROCS 1.
func atOneP(f func()) {
	prev := runtime.GOMAXPROCS(1)
	defer runtime.GOMAXPROCS(prev)
	f()
}

// mapped counts the pages of b that this process's page table maps (see present).
func mapped(t *testing.T, b []byte) int {
	n := 0
	for _, in := range present(t, b) {
		if in {
			n++
		}
	}
	return n
}
