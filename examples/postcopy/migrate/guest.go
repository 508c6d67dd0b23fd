package migrate

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/mirrormem/mirrormem/alloc"
	"github.com/mirrormem/mirrormem/internal/gcstress"
	"github.com/mirrormem/mirrormem/uffd"
)

// The guest is the process that runs on the migrated memory: the resumed workload. It maps the
// destination's memfd, registers its view with userfaultfd and hands the userfaultfd to its
// parent, the destination's pager, which serves every fault. No code of the guest is on the
// path that resolves its faults, so nothing the guest does, the garbage collector included,
// can stop them from being served.

const (
	guestFDMemory  = 3 // the image's memfd, ExtraFiles[0]
	guestFDControl = 4 // a Unix stream socket to the pager, ExtraFiles[1]

	ctlResume = 'R' // pager -> guest: count u32, count page indices u32 (the pages the source wrote last)
	ctlDone   = 'D' // pager -> guest: every page is installed; one crc32c u32 per page follows
	ctlReport = 'V' // guest -> pager: length u32, a guestReport in JSON
)

// guestReport is what the guest measured.
type guestReport struct {
	ResumeNs      int64 // CLOCK_MONOTONIC when the guest ran again
	Touches       int
	TouchMean     time.Duration
	TouchMax      time.Duration
	Verified      int
	Mismatches    int
	FirstMismatch int
	GCCycles      int64
	Err           string
}

// guestParams travel in the guest's environment (envGuest): "size,page,mode".
func guestParams(size, page int, mode Mode) string {
	return fmt.Sprintf("%d,%d,%d", size, page, int(mode))
}

func parseGuestParams(s string) (size, page int, mode Mode, err error) {
	f := strings.Split(s, ",")
	if len(f) != 3 {
		return 0, 0, 0, fmt.Errorf("bad %s=%q", envGuest, s)
	}
	var v [3]int
	for i := range v {
		if v[i], err = strconv.Atoi(f[i]); err != nil {
			return 0, 0, 0, fmt.Errorf("bad %s=%q: %w", envGuest, s, err)
		}
	}
	return v[0], v[1], Mode(v[2]), nil
}

// guestMain is the main function of a guest process; it returns the exit status.
func guestMain(params string) int {
	if err := runGuest(params); err != nil {
		fmt.Fprintln(os.Stderr, "migrate guest:", err)
		return 1
	}
	return 0
}

func runGuest(params string) (err error) {
	rep := guestReport{FirstMismatch: -1}
	size, page, mode, err := parseGuestParams(params)
	if err != nil {
		return err
	}
	touches, _ := strconv.Atoi(os.Getenv(envTouches))
	seed, _ := strconv.ParseUint(os.Getenv(envSeed), 10, 64)
	cf := os.NewFile(guestFDControl, "control")
	c, err := net.FileConn(cf)
	cf.Close()
	if err != nil {
		return fmt.Errorf("control socket: %w", err)
	}
	conn := c.(*net.UnixConn)
	defer conn.Close()
	reg, err := alloc.FromFD(guestFDMemory, size)
	os.NewFile(guestFDMemory, "memory").Close() // FromFD keeps a duplicate
	if err != nil {
		return err
	}
	// Closed last, and only after every page was installed: closing the userfaultfd earlier
	// would let the kernel map zero pages (the pager holds a descriptor of it too).
	defer reg.Close()
	mem := reg.Bytes()
	if mode == PostCopy {
		u, err := uffd.New(uffd.WithFeatures(uffd.FeatureMissingShmem | uffd.FeatureMinorShmem))
		if err != nil {
			return fmt.Errorf("userfaultfd with minor faults on shared memory (Linux 5.14+): %w", err)
		}
		defer u.Close()
		// MISSING and MINOR: every first touch of a page of this view is a fault the pager
		// sees, also for pages it already wrote into the memfd (minor faults), and fault-around
		// is off for the view, so the kernel never maps a page the pager has not released.
		if err := u.Register(reg.Addr(), len(mem), uffd.ModeMissing|uffd.ModeMinor); err != nil {
			return fmt.Errorf("registering the guest's memory: %w", err)
		}
		if err := uffd.SendFD(conn, u, reg.Addr()); err != nil {
			return fmt.Errorf("handing the userfaultfd to the pager: %w", err)
		}
	}
	gcCycles := func() int64 { return 0 }
	if os.Getenv(envGC) != "" {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		before := ms.NumGC
		stop := gcstress.Loop()
		defer stop()
		gcCycles = func() int64 {
			stop()
			runtime.ReadMemStats(&ms)
			return int64(ms.NumGC - before)
		}
	}
	r := bufio.NewReaderSize(conn, 64<<10)
	if typ, err := r.ReadByte(); err != nil || typ != ctlResume {
		return fmt.Errorf("waiting for the resume: %q, %v", typ, err)
	}
	count, err := getU32(r)
	if err != nil || int(count) > len(mem)/page {
		return fmt.Errorf("resume: %d pages, %v", count, err)
	}
	hot := make([]int, count)
	for i := range hot {
		v, err := getU32(r)
		if err != nil {
			return fmt.Errorf("resume: %w", err)
		}
		hot[i] = int(v)
	}
	rep.ResumeNs = monotonic()
	if os.Getenv(envGuestCrash) != "" {
		return errors.New("the guest failed on purpose (a test of a guest that dies)")
	}

	// Running again. The workload reads the pages it was using (the ones written last at the
	// source) and then others at random, with copy(): runtime assembly, which the collector
	// cannot interrupt while it waits in a fault. Fine here: the faults are served by
	// another process.
	touchDone := make(chan struct{})
	go func() {
		defer close(touchDone)
		rep.Touches, rep.TouchMean, rep.TouchMax = touch(mem, page, hot, touches, seed)
	}()
	if typ, err := r.ReadByte(); err != nil || typ != ctlDone {
		return fmt.Errorf("waiting for the end of the migration: %q, %v", typ, err)
	}
	manifest := make([]uint32, len(mem)/page)
	for i := range manifest {
		if manifest[i], err = getU32(r); err != nil {
			return fmt.Errorf("checksums: %w", err)
		}
	}
	<-touchDone
	rep.GCCycles = gcCycles()
	for pg := range manifest {
		if pageCRC(mem[pg*page:(pg+1)*page]) != manifest[pg] {
			if rep.Mismatches == 0 {
				rep.FirstMismatch = pg
			}
			rep.Mismatches++
		} else {
			rep.Verified++
		}
	}
	return sendGuestReport(conn, &rep)
}

func sendGuestReport(w io.Writer, rep *guestReport) error {
	b, err := json.Marshal(rep)
	if err != nil {
		return err
	}
	msg := make([]byte, 5, 5+len(b))
	msg[0] = ctlReport
	binary.LittleEndian.PutUint32(msg[1:], uint32(len(b)))
	if _, err := w.Write(append(msg, b...)); err != nil {
		return fmt.Errorf("sending the report: %w", err)
	}
	return nil
}

func readGuestReport(r io.Reader) (guestReport, error) {
	var rep guestReport
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return rep, err
	}
	n := binary.LittleEndian.Uint32(hdr[1:])
	if hdr[0] != ctlReport || n > 1<<20 {
		return rep, errors.New("malformed report")
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return rep, err
	}
	return rep, json.Unmarshal(b, &rep)
}

var touchSink atomic.Uint32

// touch reads n pages with copy(), timing each first touch: the pages of hot (in random order)
// first, then the others in random order; every page once when n is the number of pages.
func touch(mem []byte, page int, hot []int, n int, seed uint64) (count int, mean, worst time.Duration) {
	rng := rand.New(rand.NewPCG(seed, 3))
	npages := len(mem) / page
	order := make([]int, 0, npages)
	seen := make([]bool, npages)
	for _, pg := range hot {
		if pg < npages && !seen[pg] {
			seen[pg] = true
			order = append(order, pg)
		}
	}
	rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
	rest := len(order)
	for pg := range seen {
		if !seen[pg] {
			order = append(order, pg)
		}
	}
	rng.Shuffle(len(order)-rest, func(i, j int) { order[rest+i], order[rest+j] = order[rest+j], order[rest+i] })
	buf := make([]byte, page)
	var sum byte
	var total time.Duration
	for count = 0; count < min(n, npages); count++ {
		pg := order[count]
		start := time.Now()
		copy(buf, mem[pg*page:(pg+1)*page])
		d := time.Since(start)
		sum += buf[pg%page]
		total += d
		worst = max(worst, d)
	}
	touchSink.Add(uint32(sum)) // keeps the loads: a sum nobody reads could be compiled away
	if count > 0 {
		mean = total / time.Duration(count)
	}
	return count, mean, worst
}
