package fault

import (
	"bytes"
	"errors"
	"fmt"
	"runtime/debug"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/mirrormem/mirrormem/uffd"
)

const pg = 4096

// sink keeps the compiler from dropping reads whose results are unused.
var sink int

// sum reads b with a plain loop (no runtime assembly).
func sum(b []byte) int {
	s := 0
	for i := range b {
		s += int(b[i])
	}
	sink += s
	return s
}

func zeroConfig(p *testPair, n int) Config {
	return Config{UFFD: p.u, Views: p.views(), Len: n, AliasFD: -1, LogCap: 1024}
}

// A page filled through one view raises a MINOR fault (not a second MISSING) in the other,
// and is filled exactly once.
func TestFillOnceMinorInOtherView(t *testing.T) {
	for _, st := range starters(t) {
		t.Run(st.name, func(t *testing.T) {
			const n = 16 * pg
			p := newTestPair(t, n, uffd.ModeMissing|uffd.ModeMinor, uffd.FeatureMinorShmem)
			h, err := st.start(zeroConfig(p, n))
			if err != nil {
				t.Fatal(err)
			}
			defer h.Stop()
			p.orig[3*pg] = 42
			if p.dup[3*pg] != 42 {
				t.Fatal("the mirror does not show the write")
			}
			s := h.Stats()
			if s.Views[0].Missing != 1 || s.Views[0].Zeroed != 1 || s.Views[1].Minor != 1 || s.Views[1].Missing != 0 {
				t.Errorf("want 1 missing+zeroed on view 0 and 1 minor on view 1, got %+v", s.Views)
			}
			e, _ := h.Log()
			if len(e) != 2 || e[0].Kind != KindMissing || e[0].View != 0 || e[1].Kind != KindMinor || e[1].View != 1 || e[1].Offset != 3*pg {
				t.Errorf("log: %v", e)
			}
			if e[0].Thread == 0 {
				t.Errorf("log entry without thread id: %v", e[0])
			}
		})
	}
}

// Without MINOR mode on the mirror, the kernel maps a page filled through the original
// silently: no message at all.
func TestNoMinorModeIsSilent(t *testing.T) {
	const n = 4 * pg
	p := newTestPair(t, n, uffd.ModeMissing, 0)
	h, err := StartProcess(zeroConfig(p, n), ProcessOptions{NoStandby: true})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Stop()
	p.orig[0] = 7
	if p.dup[0] != 7 {
		t.Fatal("mirror does not show the write")
	}
	if s := h.Stats(); s.Messages != 1 || s.Views[1].Missing+s.Views[1].Minor != 0 {
		t.Errorf("want one message (view 0's missing fault), got %d; view 1 %+v", s.Messages, s.Views[1])
	}
}

// UFFDIO_COPY into the second view after a fill through the first: EEXIST, though the
// second view's page table entry is empty. CONTINUE then maps it.
func TestCopyIntoOtherViewIsEEXIST(t *testing.T) {
	const n = 2 * pg
	p := newTestPair(t, n, uffd.ModeMissing|uffd.ModeMinor, uffd.FeatureMinorShmem)
	buf := bytes.Repeat([]byte{9}, pg)
	if _, err := p.u.CopyAll(addrOf(p.orig), buf, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := p.u.CopyAll(addrOf(p.dup), buf, 0); !errors.Is(err, unix.EEXIST) {
		t.Fatalf("COPY into the mirror of a filled page: %v, want EEXIST", err)
	}
	if _, err := p.u.ZeroPage(addrOf(p.dup), pg, 0); !errors.Is(err, unix.EEXIST) {
		t.Fatalf("ZEROPAGE into the mirror of a filled page: %v, want EEXIST", err)
	}
	if _, err := p.u.Continue(addrOf(p.dup), pg, 0); err != nil {
		t.Fatalf("CONTINUE: %v", err)
	}
	if _, err := p.u.Continue(addrOf(p.dup), pg, 0); !errors.Is(err, unix.EEXIST) {
		t.Fatalf("second CONTINUE: %v, want EEXIST", err)
	}
	if _, err := p.u.Continue(addrOf(p.dup)+pg, pg, 0); !errors.Is(err, unix.EFAULT) {
		t.Fatalf("CONTINUE of a page not in the page cache: %v, want EFAULT", err)
	}
	if p.dup[0] != 9 {
		t.Fatal("mirror does not show the copied page")
	}
}

// MADV_DONTNEED on a view drops only its page table entry: the page stays cached and comes
// back through a MINOR fault. MADV_REMOVE frees it: the MISSING fault fires again and the page
// is filled again, which the handler accepts because it saw the REMOVE event.
func TestDontneedVersusRemove(t *testing.T) {
	for _, st := range starters(t) {
		t.Run(st.name, func(t *testing.T) {
			const n = 4 * pg
			f, data := sourceFile(t, n)
			p := newTestPair(t, n, uffd.ModeMissing|uffd.ModeMinor, uffd.FeatureMinorShmem|uffd.FeatureEventRemove)
			h, err := st.start(Config{UFFD: p.u, Views: p.views(), Len: n, Source: SourceFD, SourceFD: int(f.Fd()), SourceLen: n, AliasFD: -1, LogCap: 64})
			if err != nil {
				t.Fatal(err)
			}
			defer h.Stop()
			sum(p.orig[:pg])
			p.orig[0] = data[0] + 1 // a change the page cache keeps
			madvise(t, p.orig[:pg], unix.MADV_DONTNEED)
			if p.orig[0] != data[0]+1 {
				t.Fatal("MADV_DONTNEED on shmem lost the page")
			}
			s := h.Stats()
			if s.Views[0].Missing != 1 || s.Views[0].Minor != 1 || s.Removes != 1 {
				t.Fatalf("after DONTNEED: %+v, removes %d; want 1 missing, 1 minor, 1 remove", s.Views[0], s.Removes)
			}
			madvise(t, p.orig[:pg], unix.MADV_REMOVE)
			if p.dup[0] != data[0] {
				t.Fatalf("after MADV_REMOVE the page was not served again from the source")
			}
			s = h.Stats()
			if s.Views[1].Missing != 1 || s.Views[0].Copied+s.Views[1].Copied != 2 || s.Removes != 2 {
				t.Fatalf("after REMOVE: %+v, removes %d", s.Views, s.Removes)
			}
			if s.Violations != 0 {
				t.Errorf("a refill after MADV_REMOVE was taken for a violation: %s", s.Violation)
			}
		})
	}
}

// The invariant checks catch what they claim to: a page freed behind the handler's back
// (no REMOVE event negotiated) and filled again is reported as filled twice; a page put into
// the page cache behind its back raises a minor fault on a page never filled.
func TestInvariantViolationsAreDetected(t *testing.T) {
	for _, st := range starters(t) {
		t.Run(st.name, func(t *testing.T) {
			const n = 4 * pg
			p, fd := newMemfdPair(t, n, uffd.ModeMissing|uffd.ModeMinor, uffd.FeatureMinorShmem)
			h, err := st.start(zeroConfig(p, n))
			if err != nil {
				t.Fatal(err)
			}
			defer h.Stop()
			sum(p.orig[:pg])
			if v := h.Stats().Violations; v != 0 {
				t.Fatalf("violation on a first fill: %s", h.Stats().Violation)
			}
			madvise(t, p.orig[:pg], unix.MADV_REMOVE)
			sum(p.orig[:pg])
			s := h.Stats()
			if s.Violations != 1 || s.Violation == "" {
				t.Fatalf("second fill not reported: %d violations", s.Violations)
			}
			if _, err := unix.Pwrite(fd, []byte{1}, 2*pg); err != nil {
				t.Fatal(err)
			}
			if p.dup[2*pg] != 1 {
				t.Fatal("mirror does not show the write")
			}
			if s := h.Stats(); s.Violations != 2 {
				t.Fatalf("minor fault on a page never filled not reported: %d violations (%s)", s.Violations, s.Violation)
			}
		})
	}
}

// Minor-fault staging: missing pages are written into the page cache through the memfd
// (an alias that is not registered), then mapped with UFFDIO_CONTINUE.
func TestStagingThroughAlias(t *testing.T) {
	for _, st := range starters(t) {
		t.Run(st.name, func(t *testing.T) {
			const n = 64 * pg
			f, data := sourceFile(t, n)
			p, fd := newMemfdPair(t, n, uffd.ModeMissing|uffd.ModeMinor, uffd.FeatureMinorShmem)
			h, err := st.start(Config{UFFD: p.u, Views: p.views(), Len: n, Source: SourceFD, SourceFD: int(f.Fd()),
				SourceLen: n, AliasFD: fd, MaxAround: 8, LogCap: 256})
			if err != nil {
				t.Fatal(err)
			}
			defer h.Stop()
			for off := 0; off < n; off += pg {
				v := p.orig
				if off%(3*pg) == 0 {
					v = p.dup
				}
				if sum(v[off:off+pg]) != sum(data[off:off+pg]) {
					t.Fatalf("page %d differs", off/pg)
				}
			}
			if !bytes.Equal(p.orig, data) || !bytes.Equal(p.dup, data) {
				t.Fatal("views differ from the source")
			}
			s := h.Stats()
			if s.Views[0].Staged+s.Views[1].Staged != n/pg || s.Views[0].Copied+s.Views[1].Copied != 0 {
				t.Errorf("want every page staged once and none copied: %+v", s.Views)
			}
			if s.Violations != 0 {
				t.Error(s.Violation)
			}
		})
	}
}

// Write-protect is per view: protecting the original does not trap writes through the mirror.
// The handler records the written pages as dirty and lifts the protection.
func TestWriteProtectDirtyPerView(t *testing.T) {
	avail, err := uffd.Available()
	if err != nil || avail&uffd.FeatureWPHugetlbfsShmem == 0 {
		t.Skip("write-protect on shmem needs Linux 5.19 (UFFD_FEATURE_WP_HUGETLBFS_SHMEM)")
	}
	for _, st := range starters(t) {
		t.Run(st.name, func(t *testing.T) {
			const n = 8 * pg
			p := newTestPair(t, n, uffd.ModeMissing|uffd.ModeMinor|uffd.ModeWP,
				uffd.FeatureMinorShmem|uffd.FeatureWPHugetlbfsShmem|uffd.FeaturePagefaultFlagWP)
			h, err := st.start(zeroConfig(p, n))
			if err != nil {
				t.Fatal(err)
			}
			defer h.Stop()
			sum(p.orig)
			sum(p.dup)
			if err := p.u.WriteProtectRange(addrOf(p.orig), n, true, 0); err != nil {
				t.Fatal(err)
			}
			p.orig[2*pg] = 1
			p.orig[5*pg+7] = 1
			p.dup[6*pg] = 1 // the mirror is not protected
			for pgno := 0; pgno < n/pg; pgno++ {
				if want := pgno == 2 || pgno == 5; h.Dirty(0, pgno) != want {
					t.Errorf("view 0 page %d dirty %v, want %v", pgno, h.Dirty(0, pgno), want)
				}
				if h.Dirty(1, pgno) {
					t.Errorf("view 1 page %d dirty, but view 1 was not protected", pgno)
				}
			}
			if s := h.Stats(); s.Views[0].WP != 2 || s.Views[0].Dirty != 2 || s.Views[1].WP != 0 {
				t.Errorf("wp counters %+v", s.Views)
			}
		})
	}
}

// A file source that shrinks while served: the native handler copies from a mapping of the
// file, which faults past the new end; the handler falls back to pread and serves zeros there,
// as for any short source, instead of failing.
func TestSourceFileShrinks(t *testing.T) {
	avail, err := uffd.Available()
	if err != nil || avail&uffd.FeaturePoison == 0 {
		t.Skip("UFFDIO_POISON needs Linux 6.6")
	}
	for _, st := range starters(t) {
		for _, around := range []int{1, 8} {
			t.Run(fmt.Sprintf("%s/around%d", st.name, around), func(t *testing.T) {
				const n = 8 * pg
				f, data := sourceFile(t, n)
				p := newTestPair(t, n, uffd.ModeMissing, uffd.FeaturePoison)
				h, err := st.start(Config{UFFD: p.u, Views: p.views(), Len: n, Source: SourceFD, SourceFD: int(f.Fd()),
					SourceLen: n, AliasFD: -1, Poison: true, MaxAround: around})
				if err != nil {
					t.Fatal(err)
				}
				defer h.Stop()
				if sum(p.orig[:pg]) != sum(data[:pg]) {
					t.Fatal("first page differs")
				}
				if err := f.Truncate(2*pg + 100); err != nil {
					t.Fatal(err)
				}
				if sum(p.orig[pg:2*pg]) != sum(data[pg:2*pg]) {
					t.Fatal("second page (still in the file) differs")
				}
				// The file had 8 pages when serving began: the pages it lost are a source
				// error, never zeros, through either view, and with fault-around too.
				for _, b := range [][]byte{p.dup[2*pg : 3*pg], p.orig[5*pg : 6*pg], p.dup[7*pg:]} {
					if r := touchRecover(b); r == nil {
						t.Fatalf("a page the file lost read as %d: want SIGBUS", sum(b))
					}
				}
				s := h.Stats()
				if s.Errors == 0 || !strings.Contains(s.Error, "ended") || s.Violations != 0 {
					t.Errorf("errors %d (%s), violations %d: want the truncation reported", s.Errors, s.Error, s.Violations)
				}
			})
		}
	}
}

// touchRecover reads b and returns the panic of the fault it raised (SIGBUS of a poisoned
// page, with SetPanicOnFault), or nil.
func touchRecover(b []byte) (r any) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() { r = recover() }()
	sum(b)
	return nil
}
