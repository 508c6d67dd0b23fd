package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mirrormem/mirrormem/alloc"
	"github.com/mirrormem/mirrormem/mirror"
	"github.com/mirrormem/mirrormem/uffd"
)

// Library rows of the fault-serving suite. Each is one function of the case, so a new way of
// serving faults in the library is one more row.
//
// The library's rows resolve "bytes per fault" the library's way: in the 4 KiB cases exactly one
// page per fault (fault-around off), like the C reference; in the 64 KiB and 2 MiB cases with
// the library's adaptive fault-around capped at that size (the window starts at one page and
// doubles while access is sequential), where the C reference always resolves the aligned block.

const (
	rowServer   = "uffd.Server"
	rowServerFA = "uffd.Server (fault-around)"
	rowNative   = "mirror.ServeFaults (native)"
	rowNativeFA = "mirror.ServeFaults (native, fault-around)"
	// The server on private anonymous memory, what the peer serves.
	rowServerAnon   = "uffd.Server (private anon)"
	rowServerAnonFA = "uffd.Server (private anon, fault-around)"
)

// libraryFaultRows returns the library's rows for a case. In the 4 KiB MISSING+COPY cases
// the server also serves private anonymous memory: the memory the peer, userfaultfd-go, maps, so
// the comparisons with the peer are like for like.
func libraryFaultRows(fc faultCase, src []byte, quick bool) []row {
	rows := []row{serverRow(fc, src, fc.block, rowServer)}
	var raised func() string // the note of every server row that runs with GOMAXPROCS raised
	if procs := runtime.GOMAXPROCS(0); fc.threads >= procs {
		raised = func() string {
			return fmt.Sprintf("run with GOMAXPROCS raised from %d to %d: a goroutine blocked in a page fault keeps its P, and with every P held so, the Go server only runs when the runtime's monitor steps in (about every 10 ms)", procs, fc.threads+1)
		}
		rows[0].note = raised
		if !quick && fc.kind == kindCopy && fc.block == pageSize && !fc.random {
			// Show that cost, on a sample small enough to finish.
			st := fc
			st.starve, st.size = true, min(fc.size, fc.threads*(256<<10))
			rows = append(rows, serverRow(st, src, fc.block, fmt.Sprintf("%s (GOMAXPROCS=%d, first %s only)", rowServer, procs, sizeName(st.size))))
		}
	}
	headline := fc.kind == kindCopy && fc.block == pageSize && fc.threads == 1 && !fc.random
	if headline {
		rows = append(rows, serverRow(fc, src, uffd.DefaultFaultAround, rowServerFA))
	}
	if fc.kind == kindCopy && fc.block == pageSize {
		anon := fc
		anon.kind = kindCopyAnon
		rows = append(rows, serverRow(anon, src, fc.block, rowServerAnon))
		rows[len(rows)-1].note = raised
		if headline {
			rows = append(rows, serverRow(anon, src, uffd.DefaultFaultAround, rowServerAnonFA))
		}
	}
	if fc.kind == kindCopy || fc.kind == kindZeroPage {
		rows = append(rows, nativeRow(fc, fc.block, rowNative))
		if headline {
			rows = append(rows, nativeRow(fc, mirror.DefaultFaultAround, rowNativeFA))
		}
	}
	return rows
}

// libraryParams are the parameters of a library row serving fc with fault-around capped at
// around bytes: bytes_per_fault is that cap (the most a fault may resolve).
func libraryParams(fc faultCase, around int) map[string]any {
	p := fc.params()
	p["bytes_per_fault"] = around
	if around > pageSize {
		p["fault_around"] = fmt.Sprintf("adaptive: one page, doubling on sequential faults, up to %s", sizeName(around))
	} else {
		p["fault_around"] = "off: one page per fault"
	}
	return p
}

// continueByte is what MINOR+CONTINUE cases put in byte 1 of page p before registering (the
// same as the C reference).
func continueByte(p int) byte { return byte(p*7 + 3) }

// serverRow serves the case with a uffd.Server in this process, faults raised by goroutines
// storing one byte per page with a plain loop. around caps the fault-around window.
func serverRow(fc faultCase, src []byte, around int, name string) row {
	seed := uint64(5000)
	p := libraryParams(fc, around)
	p["gomaxprocs"] = runtime.GOMAXPROCS(0)
	if !fc.starve {
		p["gomaxprocs"] = max(runtime.GOMAXPROCS(0), fc.threads+1)
	}
	return row{name: name, params: p, run: func() (float64, error) {
		seed++
		d, err := serverRun(fc, src, around, seed)
		if err != nil {
			return 0, err
		}
		return fc.usPerPage(d), nil
	}}
}

func serverRun(fc faultCase, src []byte, around int, seed uint64) (d time.Duration, err error) {
	if procs := runtime.GOMAXPROCS(0); fc.threads >= procs && !fc.starve {
		// A goroutine blocked in a page fault keeps its P: with every P held by one, the server
		// runs only when the runtime's monitor notices (about every 10 ms). Give it a P of its own.
		defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(fc.threads + 1))
	}
	n := fc.size
	var region, alias []byte
	var want func(p int) byte
	mode := uffd.ModeMissing
	var opts []uffd.Option
	switch fc.kind {
	case kindContinue:
		// The page cache is filled through an alias that is not registered.
		fd, err := unix.MemfdCreate("bench-minor", unix.MFD_CLOEXEC)
		if err != nil {
			return 0, fmt.Errorf("memfd_create: %w", err)
		}
		defer unix.Close(fd)
		if err := unix.Ftruncate(fd, int64(n)); err != nil {
			return 0, err
		}
		if alias, err = unix.Mmap(fd, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err != nil {
			return 0, err
		}
		defer unix.Munmap(alias)
		for p := 0; p < n/pageSize; p++ {
			alias[p*pageSize+1] = continueByte(p)
		}
		if region, err = unix.Mmap(fd, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err != nil {
			return 0, err
		}
		mode, want = uffd.ModeMinor, continueByte
		opts = append(opts, uffd.WithFeatures(uffd.FeatureMinorShmem))
	default:
		flags := unix.MAP_SHARED | unix.MAP_ANONYMOUS
		if fc.kind == kindCopyAnon {
			flags = unix.MAP_PRIVATE | unix.MAP_ANONYMOUS
		}
		if region, err = unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, flags); err != nil {
			return 0, err
		}
		want = func(int) byte { return 0 }
		if fc.kind == kindCopy || fc.kind == kindCopyAnon {
			want = func(p int) byte { return src[p*pageSize+1] }
		}
	}
	defer unix.Munmap(region)

	u, err := uffd.New(opts...)
	if err != nil {
		return 0, err
	}
	defer u.Close()
	addr := addrOf(region)
	if err := u.Register(addr, n, mode); err != nil {
		return 0, err
	}
	s := uffd.NewServer(u, uffd.WithFaultAround(around))
	var source *bytes.Reader
	if fc.kind == kindCopy || fc.kind == kindCopyAnon {
		source = bytes.NewReader(src[:n])
	}
	if source != nil {
		err = s.Handle(addr, n, source)
	} else {
		err = s.Handle(addr, n, nil)
	}
	if err != nil {
		return 0, err
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- s.Serve(context.Background()) }()
	orders := touchOrder(n/pageSize, fc.threads, fc.random, seed)
	done := make(chan time.Duration, 1)
	go func() { done <- touchPages(orders, region) }()
	select {
	case d = <-done:
	case err := <-serveErr:
		// The touching goroutines wait in faults nobody will serve. Closing the userfaultfd
		// unregisters the region, the kernel maps zero pages, and they finish: report the
		// error instead of a figure.
		u.Close()
		<-done
		return 0, fmt.Errorf("uffd.Server stopped while pages were being touched: %w", err)
	}
	s.Close()
	if err := <-serveErr; err != nil && !errors.Is(err, uffd.ErrServerClosed) {
		return 0, err
	}
	if err := checkServed(region, want); err != nil {
		return 0, fmt.Errorf("uffd.Server: %w", err)
	}
	return d, nil
}

// nativeSource is the fault source of the native rows: an alloc region with the same bytes as
// the C reference's source, which the library's C handler copies from directly.
var nativeSource struct {
	once sync.Once
	r    *alloc.Region
	err  error
}

func getNativeSource(size int) (*alloc.Region, error) {
	nativeSource.once.Do(func() {
		nativeSource.r, nativeSource.err = alloc.Shared(size)
		if nativeSource.err == nil {
			b := nativeSource.r.Bytes()
			for i := range b {
				b[i] = sourceByte(i)
			}
		}
	})
	if nativeSource.err == nil && nativeSource.r.Len() < size {
		return nil, fmt.Errorf("native source has %d bytes, need %d", nativeSource.r.Len(), size)
	}
	return nativeSource.r, nativeSource.err
}

// nativeRow serves the case with mirror.ServeFaults: the pair's own handler (a C thread in cgo
// builds, a handler process without cgo), both views registered. The first half of the pages is
// touched through Original and the second half through Mirror, each page once.
func nativeRow(fc faultCase, around int, name string) row {
	seed := uint64(9000)
	var handler mirror.Handler = -1
	p := libraryParams(fc, around)
	p["memory"] = "shmem (alloc.Shared), two views: first half of the pages touched through Original, the rest through Mirror"
	return row{name: name, params: p, run: func() (float64, error) {
		seed++
		d, h, err := nativeRun(fc, around, seed)
		if err != nil {
			return 0, err
		}
		handler = h
		return fc.usPerPage(d), nil
	}, note: func() string {
		if handler == mirror.HandlerNative || handler < 0 {
			return ""
		}
		return fmt.Sprintf("served by the pair's %v handler (no C thread in this build)", handler)
	}}
}

func nativeRun(fc faultCase, around int, seed uint64) (time.Duration, mirror.Handler, error) {
	n := fc.size
	r, err := alloc.Shared(n)
	if err != nil {
		return 0, 0, err
	}
	opts := []mirror.Option{mirror.FaultAround(around), mirror.CloseRegion()}
	want := func(int) byte { return 0 }
	if fc.kind == kindCopy {
		srcRegion, err := getNativeSource(n)
		if err != nil {
			r.Close()
			return 0, 0, err
		}
		opts = append(opts, mirror.ServeFaults(mirror.RegionSource(srcRegion)))
		want = func(p int) byte { return sourceByte(p*pageSize + 1) }
	} else {
		opts = append(opts, mirror.ServeFaults(nil))
	}
	p, err := mirror.Mirror(r, opts...)
	if err != nil {
		r.Close()
		return 0, 0, err
	}
	defer p.Close()
	orders := touchOrder(n/pageSize, fc.threads, fc.random, seed)
	d := touchPages(orders, p.Original(), p.Mirror())
	if err := p.FaultErr(); err != nil {
		return 0, 0, err
	}
	if err := checkServed(p.Original(), want); err != nil {
		return 0, 0, fmt.Errorf("mirror.ServeFaults, original: %w", err)
	}
	if err := checkServed(p.Mirror(), want); err != nil {
		return 0, 0, fmt.Errorf("mirror.ServeFaults, mirror: %w", err)
	}
	o, m := p.FaultStats()
	if o.Missing == 0 || m.Missing == 0 {
		return 0, 0, fmt.Errorf("mirror.ServeFaults: missing faults per view %d and %d: both views should have faulted", o.Missing, m.Missing)
	}
	return d, p.FaultHandler(), nil
}
