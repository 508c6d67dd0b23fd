package main

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mirrormem/mirrormem/alloc"
	"github.com/mirrormem/mirrormem/mirror"
	"github.com/mirrormem/mirrormem/uffd"
)

// What serving costs the handler in CPU: per 4 KiB fault while a thread faults page after page
// (the handlers spin a few microseconds before they block while faults come close together),
// and while the views sit idle right after (the spin must collapse to nothing).

const (
	rowCPUNative    = "mirror.ServeFaults (native)"
	rowCPUProcess   = "mirror.ServeFaults (handler process)"
	rowCPUServer    = "uffd.Server (in this process)"
	rowCPUServerDir = "uffd.Server (in this process, direct reads)"
	rowOneCore      = "one core"
	cpuIdleTime     = time.Second
)

// cpuServing is one way of serving faults whose handler CPU time can be read.
type cpuServing struct {
	views [][]byte
	cpu   func() (time.Duration, error) // the handler's CPU time so far
	self  bool                          // cpu counts this whole process: take the toucher's out
	check func() error                  // after the touches: the handler's verdict
	close func()
}

// cpuSample is what one run of a CPU row measured.
type cpuSample struct {
	perFault time.Duration // handler CPU per page touched
	idle     float64       // handler CPU while idle, percent of one core
	spins    string        // the spin counters, where the handler reports them
}

// cpuRun serves size bytes one way, touches every page once in order from one locked thread,
// then leaves the views idle for cpuIdleTime, and reads the handler's CPU time around both.
func cpuRun(size int, start func(n int) (*cpuServing, error)) (cpuSample, error) {
	sv, err := start(size)
	if err != nil {
		return cpuSample{}, err
	}
	defer sv.close()
	c0, err := sv.cpu()
	if err != nil {
		return cpuSample{}, err
	}
	npages := size / pageSize
	touch, err := touchTimed(npages, sv.views)
	if err != nil {
		return cpuSample{}, err
	}
	c1, err := sv.cpu()
	if err != nil {
		return cpuSample{}, err
	}
	if sv.self {
		c1 -= touch
	}
	if err := sv.check(); err != nil {
		return cpuSample{}, err
	}
	// Idle: the last faults may have armed a spin; it ends within 50 us, then nothing runs.
	time.Sleep(cpuIdleTime)
	c2, err := sv.cpu()
	if err != nil {
		return cpuSample{}, err
	}
	if sv.self {
		c2 -= touch
	}
	return cpuSample{perFault: (c1 - c0) / time.Duration(npages), idle: 100 * (c2 - c1).Seconds() / cpuIdleTime.Seconds()}, nil
}

// touchTimed stores one byte to every page in order, page p through view p*len(views)/npages,
// from one goroutine locked to its thread, and returns that thread's CPU time for it. A plain
// loop, never runtime assembly (see touchPages).
func touchTimed(npages int, views [][]byte) (time.Duration, error) {
	type res struct {
		d   time.Duration
		err error
	}
	ch := make(chan res, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		var r0, r1 unix.Rusage
		if err := unix.Getrusage(unix.RUSAGE_THREAD, &r0); err != nil {
			ch <- res{err: err}
			return
		}
		for p := 0; p < npages; p++ {
			views[p*len(views)/npages][p*pageSize] = 1
		}
		err := unix.Getrusage(unix.RUSAGE_THREAD, &r1)
		ch <- res{time.Duration(r1.Utime.Nano() + r1.Stime.Nano() - r0.Utime.Nano() - r0.Stime.Nano()), err}
	}()
	r := <-ch
	return r.d, r.err
}

// pairServing serves with a mirrored pair's own handler (h; HandlerAuto: the C thread where
// cgo is in, the handler process without), the pages zero-filled, half touched through each view.
func pairServing(h mirror.Handler) func(n int) (*cpuServing, error) {
	return func(n int) (*cpuServing, error) {
		r, err := alloc.Shared(n)
		if err != nil {
			return nil, err
		}
		p, err := mirror.Mirror(r, mirror.ServeFaults(nil), mirror.WithHandler(h), mirror.FaultAround(pageSize), mirror.CloseRegion())
		if err != nil {
			r.Close()
			return nil, err
		}
		return &cpuServing{views: [][]byte{p.Original(), p.Mirror()}, cpu: p.FaultHandlerCPU, check: p.FaultErr,
			close: func() { p.Close() }}, nil
	}
}

// selfCPU is the CPU time of this whole process: the in-process server's, the toucher's and the
// runtime's. The toucher's is taken out by threadCPU.
func selfCPU() (time.Duration, error) {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0, err
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}

// serverServing serves private anonymous memory with a uffd.Server in this process. Its CPU
// time is the process's minus the touching thread's: the runtime's share is counted as the
// server's (it would not run without it).
func serverServing(opts ...uffd.ServerOption) func(n int) (*cpuServing, error) {
	return func(n int) (*cpuServing, error) {
		region, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			return nil, err
		}
		u, err := uffd.New()
		if err != nil {
			unix.Munmap(region)
			return nil, err
		}
		fail := func(err error) (*cpuServing, error) { u.Close(); unix.Munmap(region); return nil, err }
		if err := u.Register(addrOf(region), n, uffd.ModeMissing); err != nil {
			return fail(err)
		}
		s := uffd.NewServer(u, append([]uffd.ServerOption{uffd.WithoutFaultAround()}, opts...)...)
		if err := s.Handle(addrOf(region), n, nil); err != nil {
			return fail(err)
		}
		done := make(chan error, 1)
		go func() { done <- s.Serve(context.Background()) }()
		return &cpuServing{
			views: [][]byte{region},
			cpu:   selfCPU,
			self:  true,
			check: func() error {
				select {
				case err := <-done:
					return fmt.Errorf("uffd.Server stopped: %w", err)
				default:
					return nil
				}
			},
			close: func() {
				s.Close()
				if err := <-done; err != nil && !errors.Is(err, uffd.ErrServerClosed) {
					fmt.Println("uffd.Server:", err)
				}
				u.Close()
				unix.Munmap(region)
			},
		}, nil
	}
}

// suiteFaultCPU measures the handlers' CPU time per fault and while idle. Each run of a row
// measures both; the idle case shows the idle figures of the per-fault case's runs, next to
// one core, and carries the target: under 1% of a core.
func suiteFaultCPU(b *bencher, size int) {
	runs := b.cfg.runsOr(3)
	type variant struct {
		name  string
		start func(n int) (*cpuServing, error)
	}
	vs := []variant{
		{rowCPUNative, pairServing(mirror.HandlerAuto)},
		{rowCPUProcess, pairServing(mirror.HandlerProcess)},
		{rowCPUServer, serverServing()},
		{rowCPUServerDir, serverServing(uffd.WithDirectReads())},
	}
	samples := make([][]cpuSample, len(vs))
	mems := make([]map[string]any, len(vs))
	var rows []row
	for i, v := range vs {
		var skip func() string
		if v.name == rowCPUNative && !cgoEnabled {
			skip = func() string { return errNoCgo.Error() + " (no C thread: the handler process row serves instead)" }
		}
		mem := map[string]any{"memory": "shmem (alloc.Shared), two views, half the pages touched through each"}
		if v.name == rowCPUServer || v.name == rowCPUServerDir {
			mem["memory"] = memAnon
		}
		mems[i] = mem
		rows = append(rows, row{name: v.name, skip: skip, params: mem, run: func() (float64, error) {
			s, err := cpuRun(size, v.start)
			if err != nil {
				return 0, err
			}
			samples[i] = append(samples[i], s)
			return float64(s.perFault.Nanoseconds()) / 1e3, nil
		}})
	}
	perName := fmt.Sprintf("handler CPU per 4 KiB fault, 1 thread, sequential, %s", sizeName(size))
	// No "threads"/"pattern" keys: those select the time-per-page figures the plots draw.
	params := map[string]any{"resolve": "MISSING+ZEROPAGE, one page per fault", "bytes_per_fault": pageSize,
		"touch": "one thread, every page once, in order", "region_bytes": size, "page_bytes": pageSize, "measure": "handler CPU time (/proc schedstat of its threads; for the in-process server the process's rusage minus the touching thread's)"}
	ms := b.measure(caseSpec{suite: "faults", name: perName, params: params, unit: "us/fault", better: "lower", runs: runs}, rows)
	// The idle figures of the same runs, as their own case, next to one core.
	idleName := fmt.Sprintf("handler CPU while the views sit idle for %v after faulting", cpuIdleTime)
	idleRows := []row{{name: rowOneCore, params: map[string]any{"memory": "none: the reference, 100% of one core"},
		run: func() (float64, error) { return 100, nil }}}
	for i, v := range vs {
		k := 0
		idleRows = append(idleRows, row{name: v.name, params: mems[i], run: func() (float64, error) {
			if ms[i].NotMeasured != "" {
				return 0, errors.New(ms[i].NotMeasured)
			}
			if k >= len(samples[i]) {
				return 0, errors.New("no run of the per-fault case left")
			}
			k++
			return samples[i][k-1].idle, nil
		}})
	}
	ip := map[string]any{"measure": "handler CPU time over the idle second, percent of one core", "region_bytes": size, "page_bytes": pageSize}
	b.measure(caseSpec{suite: "faults", name: idleName, params: ip, unit: "% of a core", better: "lower", runs: runs}, idleRows)
	for _, v := range vs {
		b.rep.addTarget("faults", "handler idle CPU: "+v.name, b.rep.find("faults", idleName, v.name), b.rep.find("faults", idleName, rowOneCore), "<=", 0.01, rowOneCore)
	}
}
