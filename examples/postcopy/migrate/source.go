package migrate

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mirrormem/mirrormem/alloc"
	"github.com/mirrormem/mirrormem/mirror"
)

// source is the migration's source side: the image, its workload and its dirty tracking.
type source struct {
	cfg    Config
	page   int
	npages int
	reg    *alloc.Region
	pair   *mirror.Pair
	img    []byte // view 0 of the pair: the workload writes here, dirty tracking watches it

	stopWork chan struct{}
	stopOnce sync.Once
	workDone chan struct{}
	writes   atomic.Int64
	wrote    chan struct{} // closed once the workload's first batch of writes is done

	sent      atomic.Int64   // bytes written to the destination, every connection (countingListener)
	dirty     []int          // the pages written after the start of the pre-copy (post-copy)
	fetches   []atomic.Int32 // per page: times the destination fetched it after the resume
	requests  atomic.Int64   // requests of the destination after the resume
	afterStop atomic.Int64   // pages sent after the resume
	dropConns chan struct{}  // closed to simulate the source dying (Config.FailSourceAfter)
	dropOnce  sync.Once
}

// newSource maps the image, fills it, and (for post-copy) starts tracking writes.
func newSource(cfg Config) (*source, error) {
	page := alloc.PageSize()
	reg, err := alloc.Shared(cfg.ImageSize)
	if err != nil {
		return nil, err
	}
	opts := []mirror.Option{mirror.ServeFaults(nil), mirror.TrackWrites()}
	pair, err := mirror.Mirror(reg, opts...)
	if err != nil {
		reg.Close()
		return nil, fmt.Errorf("migrate: source image: %w", err)
	}
	s := &source{cfg: cfg, page: page, npages: reg.Len() / page, reg: reg, pair: pair, img: pair.Original(),
		stopWork: make(chan struct{}), workDone: make(chan struct{}), dropConns: make(chan struct{}), wrote: make(chan struct{})}
	s.fetches = make([]atomic.Int32, s.npages)
	// Initial contents: random bytes, different on every page.
	rng := rand.New(rand.NewPCG(cfg.Seed, 1))
	block := make([]byte, 64<<10+page)
	for i := range block {
		block[i] = byte(rng.Uint32())
	}
	for p := 0; p < s.npages; p++ {
		copy(s.img[p*page:(p+1)*page], block[(p*97)%(len(block)-page):])
	}
	return s, nil
}

func (s *source) close() error {
	err := s.pair.Close()
	if e := s.reg.Close(); err == nil {
		err = e
	}
	return err
}

// workload writes the image until stopped: most writes go to a hot set, the rest anywhere, in
// batches paced by a ticker (the rate of a busy guest, not a tight loop that would dirty every
// page at once).
func (s *source) workload() {
	defer close(s.workDone)
	rng := rand.New(rand.NewPCG(s.cfg.Seed, 2))
	hot := max(1, int(float64(s.npages)*s.cfg.HotFraction))
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	perTick := max(1, s.cfg.WritesPerSecond/1000)
	var n int64
	for {
		select {
		case <-s.stopWork:
			return
		case <-tick.C:
		}
		for i := 0; i < perTick; i++ {
			p := rng.IntN(s.npages)
			if rng.IntN(10) != 0 {
				p = rng.IntN(hot)
			}
			off := p*s.page + rng.IntN(s.page-8)
			n++
			for k := 0; k < 8; k++ {
				s.img[off+k] = byte(n >> (8 * k))
			}
			s.writes.Add(1)
		}
		if n == int64(perTick) {
			close(s.wrote)
		}
	}
}

// stop stops the workload and waits until it has; later calls do nothing.
func (s *source) stop() {
	s.stopOnce.Do(func() { close(s.stopWork) })
	<-s.workDone
}

func (s *source) drop() { s.dropOnce.Do(func() { close(s.dropConns) }) }

// sendingAfterStop counts n pages about to be sent after the resume and reports whether the
// source must instead play dead now (Config.FailSourceAfter).
func (s *source) sendingAfterStop(n int) bool {
	if s.cfg.FailSourceAfter < 0 {
		return false
	}
	if s.afterStop.Add(int64(n)) > int64(s.cfg.FailSourceAfter) {
		s.drop()
		return true
	}
	return false
}

// writePage sends one page on the stream. The page is copied first and the checksum taken
// of the copy: during the pre-copy the workload may be writing the page at the same time.
func (s *source) writePage(w io.Writer, p int, scratch []byte) error {
	b := scratch[:s.page]
	copy(b, s.img[p*s.page:(p+1)*s.page])
	if _, err := w.Write([]byte{msgPage}); err != nil {
		return err
	}
	if err := putU32(w, uint32(p), pageCRC(b)); err != nil {
		return err
	}
	_, err := w.Write(b)
	return err
}

// fetch counts a request for count pages from first, about to be sent to the destination
// (for one of its faults, or for its background push); it reports false if the source must
// play dead instead (Config.FailSourceAfter).
func (s *source) fetch(first, count int) bool {
	if s.sendingAfterStop(count) {
		return false
	}
	s.requests.Add(1)
	for p := first; p < first+count; p++ {
		s.fetches[p].Add(1)
	}
	return true
}

// fetched sums up what the destination fetched after the resume: the pages written after the
// pre-copy it fetched, fetches of a page it had fetched before, and fetches of pages it held.
func (s *source) fetched() (dirty, again, clean int) {
	wasDirty := make([]bool, s.npages)
	for _, p := range s.dirty {
		wasDirty[p] = true
	}
	for p := range s.fetches {
		n := int(s.fetches[p].Load())
		switch {
		case n == 0:
		case wasDirty[p]:
			dirty, again = dirty+1, again+n-1
		default:
			clean, again = clean+1, again+n-1
		}
	}
	return dirty, again, clean
}

// errPlayDead is what the source's servers answer once it plays dead.
var errPlayDead = errors.New("the source is gone (Config.FailSourceAfter)")

// pageReader is the image as the page server (mirror.ServePages) reads it: one ReadAt per
// request of the destination's handler processes, for pages of the frozen image.
type pageReader struct{ s *source }

func (pr pageReader) ReadAt(p []byte, off int64) (int, error) {
	s := pr.s
	select {
	case <-s.dropConns:
		return 0, errPlayDead
	default:
	}
	if !s.fetch(int(off)/s.page, (len(p)+s.page-1)/s.page) {
		return 0, errPlayDead
	}
	return copy(p, s.img[off:]), nil
}

// stream runs the stream connection: hello, pre-copy, stop, resume, checksums, end. The pages
// the destination does not take from the pre-copy it fetches from the page server, for its
// faults and its background push (the library's Restore). It returns the time the pre-copy
// took, the time of the stop, and how many pages were written after the pre-copy started.
func (s *source) stream(conn io.Writer, mode Mode) (preCopy time.Duration, stopAt int64, dirty int, err error) {
	w := bufio.NewWriterSize(conn, 1<<20)
	w.Write([]byte{msgHello})
	putU32(w, uint32(uint64(len(s.img))), uint32(uint64(len(s.img))>>32), uint32(s.page), uint32(mode))
	start := time.Now()
	if mode == PostCopy {
		if err := s.sendImage(w); err != nil {
			return 0, 0, 0, fmt.Errorf("migrate: pre-copy: %w", err)
		}
		// A migration of an image nobody wrote during the pre-copy would test nothing: on a
		// busy machine the workload may not have run yet (its first write waits for the
		// write-protect fault handler to start), so stop only after its first batch.
		select {
		case <-s.wrote:
		case <-s.workDone:
		}
		preCopy = time.Since(start)
		s.stop()
		stopAt = monotonic()
		offs, err := s.pair.Dirty(0)
		if err != nil {
			return 0, 0, 0, fmt.Errorf("migrate: dirty pages: %w", err)
		}
		for _, off := range offs {
			s.dirty = append(s.dirty, off/s.page)
		}
	} else {
		s.stop()
		stopAt = monotonic()
		if err := s.sendImage(w); err != nil {
			return 0, 0, 0, fmt.Errorf("migrate: copy: %w", err)
		}
	}
	// Resume: the list of pages the destination must not take from the pre-copy.
	w.Write([]byte{msgResume})
	putU32(w, uint32(len(s.dirty)))
	for _, p := range s.dirty {
		putU32(w, uint32(p))
	}
	if err := w.Flush(); err != nil {
		return 0, 0, 0, fmt.Errorf("migrate: resume: %w", err)
	}
	// The checksums of the final image, computed now that it is frozen: the destination
	// checks every page it ends up with against them.
	w.Write([]byte{msgManifest})
	for p := 0; p < s.npages; p++ {
		putU32(w, pageCRC(s.img[p*s.page:(p+1)*s.page]))
	}
	w.Write([]byte{msgEnd})
	if err := w.Flush(); err != nil {
		return 0, 0, 0, fmt.Errorf("migrate: checksums: %w", err)
	}
	return preCopy, stopAt, len(s.dirty), nil
}

// sendImage sends every page on the stream and flushes it.
func (s *source) sendImage(w *bufio.Writer) error {
	scratch := make([]byte, s.page)
	for p := 0; p < s.npages; p++ {
		if err := s.writePage(w, p, scratch); err != nil {
			return err
		}
	}
	return w.Flush()
}

// httpHandler serves the image with HTTP Range support (http.ServeContent) for a destination
// that fetches pages on demand with mirror.HTTPSource. Only pages of the frozen image are
// asked for: the destination asks after the resume (its probe of byte 0 is not a page).
func (s *source) httpHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var first, last int
		if _, err := fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-%d", &first, &last); err == nil && first%s.page == 0 && (last+1)%s.page == 0 {
			if !s.fetch(first/s.page, (last+1-first)/s.page) {
				panic(http.ErrAbortHandler) // the simulated crash
			}
		}
		select {
		case <-s.dropConns:
			panic(http.ErrAbortHandler)
		default:
		}
		http.ServeContent(w, r, "image", time.Time{}, bytes.NewReader(s.img))
	})
}
