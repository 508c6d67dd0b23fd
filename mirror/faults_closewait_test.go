package mirror

import (
	"testing"
	"time"

	"github.com/mirrormem/mirrormem/alloc"
	"github.com/mirrormem/mirrormem/internal/fault"
)

// blockingSource blocks every ReadAt until release is closed.
type blockingSource struct {
	entered chan struct{}
	release chan struct{}
}

func (s *blockingSource) ReadAt(p []byte, off int64) (int, error) {
	select {
	case s.entered <- struct{}{}:
	default:
	}
	<-s.release
	return len(p), nil
}

// Close with a ReadAt in flight returns after a bounded wait instead of hanging with the
// source; the serving goroutine ends once ReadAt returns, leaving nothing behind.
func TestCloseWithReadAtInFlight(t *testing.T) {
	if !fault.NativeAvailable {
		t.Skip("a Go source is refused without cgo")
	}
	defer noneLeft(t)()
	old := goCloseWait
	goCloseWait = 200 * time.Millisecond
	defer func() { goCloseWait = old }()
	n := 4 * alloc.PageSize()
	r := shared(t, n)
	defer r.Close()
	src := &blockingSource{entered: make(chan struct{}, 1), release: make(chan struct{})}
	p, err := Mirror(r, ServeFaults(src), WithHandler(HandlerGo))
	if err != nil {
		t.Fatal(err)
	}
	populated := make(chan error, 1)
	go func() { populated <- p.Populate(0, alloc.PageSize()) }() // faults inside a system call
	<-src.entered
	closed := make(chan error, 1)
	go func() { closed <- p.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Errorf("Close: %v", err)
		}
	case <-time.After(30 * time.Second):
		close(src.release)
		t.Fatal("Close hung for 30 s with a ReadAt in flight")
	}
	close(src.release)
	<-populated // woken by the closed userfaultfd; its result does not matter
}
