package fault

import (
	"bytes"
	"fmt"
	"os"
	"testing"

	"github.com/mirrormem/mirrormem/internal/gcstress"
	"github.com/mirrormem/mirrormem/uffd"
)

// TestMain warms up what the C library and the runtime keep after a first handler thread
// (a cached thread stack, a malloc arena), so that leak checks see only what handlers leave.
func TestMain(m *testing.M) {
	if helper := os.Getenv("FAULT_TEST_HELPER"); helper != "" {
		os.Exit(runHelper(helper))
	}
	if NativeAvailable {
		warmUp()
	}
	os.Exit(m.Run())
}

func warmUp() {
	p := newTestPair(panicTB{}, 4096, uffd.ModeMissing, 0)
	defer p.close()
	h, err := StartNative(Config{UFFD: p.u, Views: p.views(), Len: 4096, AliasFD: -1})
	if err != nil {
		panic(err)
	}
	sum(p.dup)
	h.Stop()
}

type panicTB struct{ testing.TB }

func (panicTB) Helper()                   {}
func (panicTB) Fatal(args ...any)         { panic(fmt.Sprint(args...)) }
func (panicTB) Fatalf(f string, a ...any) { panic(fmt.Sprintf(f, a...)) }
func (panicTB) Cleanup(func())            {}

type starter struct {
	name  string
	start func(Config) (*Handler, error)
}

// starters returns the handlers to test; each start also checks, at the end of the test, that
// the handler left no goroutine nor child process behind.
func starters(t testing.TB) []starter {
	s := []starter{{"process", func(c Config) (*Handler, error) { return StartProcess(c, ProcessOptions{}) }}}
	if NativeAvailable {
		s = append([]starter{{"native", StartNative}}, s...)
	}
	for i := range s {
		start := s[i].start
		s[i].start = func(c Config) (*Handler, error) {
			noneLeft(t)
			return start(c)
		}
	}
	return s
}

func TestServesBothViewsFromFile(t *testing.T) {
	for _, st := range starters(t) {
		for _, around := range []int{1, 16} {
			t.Run(st.name+map[bool]string{true: "/around", false: "/4k"}[around > 1], func(t *testing.T) {
				const n = 2 << 20
				f, data := sourceFile(t, n-1000) // short source: the tail reads as zeros
				defer checkLeaks(t)()
				p := newTestPair(t, n, uffd.ModeMissing|uffd.ModeMinor, uffd.FeatureMinorShmem)
				defer p.close()
				data = append(data, make([]byte, 1000)...)
				h, err := st.start(Config{UFFD: p.u, Views: p.views(), Len: n, Source: SourceFD, SourceFD: int(f.Fd()),
					SourceLen: n - 1000, AliasFD: -1, MaxAround: around, LogCap: 1 << 16})
				if err != nil {
					t.Fatal(err)
				}
				defer h.Stop()
				// copy() runs runtime assembly: safe, the handler is not a Go thread of this process.
				defer gcstress.Loop()()
				buf := make([]byte, 4096)
				for off := 0; off < n; off += 4096 {
					v := p.orig
					if (off/4096)%3 == 1 {
						v = p.dup
					}
					copy(buf, v[off:off+4096])
					if !bytes.Equal(buf, data[off:off+4096]) {
						t.Fatalf("page at %d differs", off)
					}
				}
				if !bytes.Equal(p.dup, data) || !bytes.Equal(p.orig, data) {
					t.Fatal("views differ from the source")
				}
				s := h.Stats()
				t.Log(h.Report())
				if s.Views[0].Missing == 0 || s.Views[1].Missing == 0 {
					t.Errorf("missing faults per view: %d, %d; want both > 0", s.Views[0].Missing, s.Views[1].Missing)
				}
				if s.Views[0].Minor == 0 || s.Views[1].Minor == 0 {
					t.Errorf("minor faults per view %d, %d: every page was read through both views", s.Views[0].Minor, s.Views[1].Minor)
				}
				if s.Violations != 0 {
					t.Errorf("violations: %s", s.Violation)
				}
				if got := h.FilledPages(); got != n/4096 {
					t.Errorf("filled pages %d, want %d", got, n/4096)
				}
				if filled := s.Views[0].Copied + s.Views[1].Copied; filled != n/4096 {
					t.Errorf("pages copied %d, want exactly %d (each page once)", filled, n/4096)
				}
				if around > 1 && s.Views[0].Around == 0 {
					t.Errorf("fault-around on a sequential scan resolved no extra page")
				}
				if err := h.Stop(); err != nil {
					t.Fatal(err)
				}
			})
		}
	}
}
