package ring

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/mirrormem/mirrormem/internal/leakcheck"
	"golang.org/x/sys/unix"
)

const childEnv = "RING_TEST_CHILD"

// childMain is the consumer process of the two-process tests: it attaches to the ring passed as
// fds 3 (header) and 4 (data) and does what the parent asked in RING_TEST_CHILD.
func childMain() int {
	r, err := Attach(3, 4)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child: Attach:", err)
		return 2
	}
	defer r.Close()
	switch mode := os.Getenv(childEnv); {
	case strings.HasPrefix(mode, "stream:"):
		seed, _ := strconv.ParseUint(strings.TrimPrefix(mode, "stream:"), 10, 64)
		w := &checkWriter{dst: &stream{seed: seed}, left: -1}
		n, err := r.WriteTo(w)
		if w.err != nil || err != nil {
			fmt.Fprintln(os.Stderr, "child:", w.err, err)
			return 1
		}
		fmt.Println(n)
		return 0
	case mode == "hold", mode == "submit-hold":
		if mode == "submit-hold" {
			rec, err := r.Reserve(len(lastWords))
			if err != nil {
				fmt.Fprintln(os.Stderr, "child: Reserve:", err)
				return 1
			}
			copy(rec, lastWords)
			r.Submit()
		}
		fmt.Println("ready")
		io.ReadAll(os.Stdin) // the parent never writes: it kills this process while it waits here
		return 0
	case mode == "block":
		fmt.Println("ready")
		_, err := r.ReadSlice() // the parent closes the ring while we wait here
		if errors.Is(err, ErrClosed) {
			return 0
		}
		fmt.Fprintln(os.Stderr, "child: ReadSlice returned", err, "not ErrClosed")
		return 1
	}
	return 3
}

// lastWords is the record a child submits before it is killed.
const lastWords = "submitted before dying"

func startChild(t *testing.T, r *Ring, mode string) (*exec.Cmd, io.ReadCloser) {
	t.Helper()
	hf, df, err := r.Files()
	if err != nil {
		t.Fatal(err)
	}
	defer hf.Close()
	defer df.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+mode)
	cmd.ExtraFiles = []*os.File{hf, df}
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if _, err := cmd.StdinPipe(); err != nil { // never written: a "hold" child waits on it
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd, out
}

func TestTwoProcesses(t *testing.T) {
	defer leakcheck.Check(t)()
	r := makeRing(t, "shared", 5*page)
	defer r.Close()
	const seed, total = 99, 8 << 20
	cmd, out := startChild(t, r, fmt.Sprintf("stream:%d", seed))
	src := &stream{seed: seed}
	buf := make([]byte, 3*page+17)
	for sent := 0; sent < total; {
		k := min(len(buf), total-sent)
		src.fill(buf[:k])
		if _, err := r.Write(buf[:k]); err != nil {
			t.Fatal(err)
		}
		sent += k
	}
	r.CloseWrite()
	got, _ := io.ReadAll(out)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("consumer process: %v", err)
	}
	if strings.TrimSpace(string(got)) != strconv.Itoa(total) {
		t.Fatalf("consumer process read %q bytes, want %d", got, total)
	}
}

// TestCloseWakesOtherProcess: Close in this process wakes a consumer blocked in another.
func TestCloseWakesOtherProcess(t *testing.T) {
	defer leakcheck.Check(t)()
	r := makeRing(t, "shared", page)
	cmd, out := startChild(t, r, "block")
	line := make([]byte, 6)
	if _, err := io.ReadFull(out, line); err != nil || string(line) != "ready\n" {
		t.Fatalf("child: %q, %v", line, err)
	}
	// The child said it is about to wait; wait until it does (its flag is in shared memory).
	waitUntil(r.readerWaiting)
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("blocked consumer process did not get ErrClosed: %v", err)
	}
}

func TestAttachRefusesNonRing(t *testing.T) {
	defer leakcheck.Check(t)()
	f, err := os.CreateTemp(t.TempDir(), "notaring")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.Write(make([]byte, 2*page))
	fd := int(f.Fd())
	if r, err := Attach(fd, fd); err == nil {
		r.Close()
		t.Fatal("Attach of a file that holds no ring header succeeded")
	} else {
		t.Log(err)
	}
}

// waitReady reads the child's "ready" line.
func waitReady(t *testing.T, out io.Reader) {
	t.Helper()
	line := make([]byte, 6)
	if _, err := io.ReadFull(out, line); err != nil || string(line) != "ready\n" {
		t.Fatalf("child: %q, %v", line, err)
	}
}

// TestPeerKilled: a side waiting for the other process learns that it was killed (SIGKILL, so
// it closed nothing) and returns ErrPeerGone instead of waiting for ever; what the dead
// process submitted before it died is still read.
func TestPeerKilled(t *testing.T) {
	defer leakcheck.Check(t)()
	defer leakcheck.NoneLeft(t)()
	for _, waiter := range []string{"consumer", "producer"} {
		t.Run(waiter, func(t *testing.T) {
			r := makeRing(t, "shared", page)
			defer r.Close()
			mode := "hold"
			if waiter == "consumer" {
				mode = "submit-hold"
			}
			cmd, out := startChild(t, r, mode)
			waitReady(t, out)
			errc := make(chan error, 1)
			if waiter == "consumer" {
				rec, err := r.NextRecord()
				if err != nil || string(rec) != lastWords {
					t.Fatalf("record the child submitted: %q, %v", rec, err)
				}
				go func() {
					_, err := r.NextRecord()
					errc <- err
				}()
				waitUntil(r.readerWaiting)
			} else {
				go func() {
					_, err := r.Write(make([]byte, 2*page)) // more than the ring holds: waits
					errc <- err
				}()
				waitUntil(r.writerWaiting)
			}
			if err := cmd.Process.Kill(); err != nil {
				t.Fatal(err)
			}
			cmd.Wait()
			err := <-errc
			if !errors.Is(err, ErrPeerGone) || !strings.Contains(err.Error(), strconv.Itoa(cmd.Process.Pid)) {
				t.Fatalf("blocked %s after the other process was killed: %v, want ErrPeerGone naming process %d", waiter, err, cmd.Process.Pid)
			}
			t.Log(err)
		})
	}
}

// TestPeerCorruptPosition: a peer process that writes an impossible position into the shared
// header (outside [0, 2n), or more than the capacity away from this side's) makes every call
// of this side that reads it return ErrCorrupt, never slice outside the ring (a panic, or
// worse), and the ring still closes. Attach refuses a header that holds such positions.
func TestPeerCorruptPosition(t *testing.T) {
	defer leakcheck.Check(t)()
	pg := uint64(page)
	calls := map[string]struct {
		producer bool // the call reads the consumer's tail; else the producer's head
		call     func(r *Ring) error
	}{
		"NextRecord":       {false, func(r *Ring) error { _, err := r.NextRecord(); return err }},
		"ReadRecords":      {false, func(r *Ring) error { _, err := r.ReadRecords(func([]byte) bool { return true }); return err }},
		"Read":             {false, func(r *Ring) error { _, err := r.Read(make([]byte, 10)); return err }},
		"ReadSliceAtLeast": {false, func(r *Ring) error { _, err := r.ReadSliceAtLeast(8); return err }},
		"Write":            {true, func(r *Ring) error { _, err := r.Write(make([]byte, 3*page)); return err }},
		"Reserve":          {true, func(r *Ring) error { _, err := r.Reserve(page / 2); return err }},
	}
	for name, c := range calls {
		// Outside [0, 2n), and with both sides at 0, a head 2n-8 ahead of the tail (a tail
		// n-8 ahead of the head, also once a first Reserve took half the ring).
		bads := []uint64{1 << 63, 3 * pg, 2*pg - 8}
		if c.producer {
			bads[2] = pg - 8
		}
		for _, bad := range bads {
			r := makeRing(t, "shared", page)
			if c.producer {
				r.h.tail.Store(bad) // the consumer's position, as its process would write it
			} else {
				r.h.head.Store(bad)
			}
			// The first call may use only the room this side knew of before (Reserve); then
			// each call reads the position, and a later one must not trust what it read.
			for i := 0; i < 3; i++ {
				err := c.call(r)
				if err == nil && i == 0 {
					continue
				}
				if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), strconv.FormatUint(bad, 10)) {
					t.Errorf("%s with the other side at %d, call %d: %v, want ErrCorrupt naming the position", name, bad, i, err)
				}
			}
			if err := r.Close(); err != nil {
				t.Errorf("%s: Close: %v", name, err)
			}
		}
	}
	// Positions outside [0, 2n) are refused; positions too far apart are taken (the other
	// process may move them between the two loads) and found impossible by each side's first
	// call, a Write larger than the ring included (which would have been copied by the room a
	// stale pair made up).
	for _, bad := range [][2]uint64{{1 << 63, 0}, {0, 2 * pg}, {3 * pg / 2, 0}, {0, pg / 2}} {
		r := makeRing(t, "shared", page)
		r.h.head.Store(bad[0])
		r.h.tail.Store(bad[1])
		hf, df, err := r.Files()
		if err != nil {
			t.Fatal(err)
		}
		q, err := Attach(int(hf.Fd()), int(df.Fd()))
		switch inRange := bad[0] < 2*pg && bad[1] < 2*pg; {
		case !inRange && !errors.Is(err, ErrCorrupt):
			t.Errorf("Attach with head %d and tail %d: %v, want ErrCorrupt", bad[0], bad[1], err)
		case inRange && err != nil:
			t.Errorf("Attach with head %d and tail %d: %v", bad[0], bad[1], err)
		case inRange:
			if _, err := q.Write(make([]byte, 3*page)); !errors.Is(err, ErrCorrupt) {
				t.Errorf("Write after Attach with head %d and tail %d: %v, want ErrCorrupt", bad[0], bad[1], err)
			}
			if _, err := q.Read(make([]byte, 10)); !errors.Is(err, ErrCorrupt) {
				t.Errorf("Read after Attach with head %d and tail %d: %v, want ErrCorrupt", bad[0], bad[1], err)
			}
		}
		if q != nil {
			q.Close()
		}
		hf.Close()
		df.Close()
		r.Close()
	}
}

// TestAttachChecksBeforeMapping: Attach looks at the header before it maps (and populates)
// the data: given a data file that is not the ring's, here a sparse 64 MiB memfd, it fails
// without writing a page of it (populating it would have allocated all 64 MiB, or the blocks
// of a sparse file on disk).
func TestAttachChecksBeforeMapping(t *testing.T) {
	defer leakcheck.Check(t)()
	r := makeRing(t, "shared", page)
	defer r.Close()
	hf, df, err := r.Files()
	if err != nil {
		t.Fatal(err)
	}
	defer hf.Close()
	df.Close()
	fd, err := unix.MemfdCreate("not-the-data", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Ftruncate(fd, 64<<20); err != nil {
		t.Fatal(err)
	}
	if q, err := Attach(int(hf.Fd()), fd); err == nil || !strings.Contains(err.Error(), "header says") {
		if err == nil {
			q.Close()
		}
		t.Errorf("Attach with another data file: %v, want the header's size named", err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatal(err)
	}
	if st.Blocks != 0 {
		t.Errorf("a refused Attach wrote %d KiB of the data file", st.Blocks/2)
	}
}

// TestPeerCannotTruncate: the memfds of a shared ring are sealed against shrinking, so the
// other process cannot truncate them under this one (whose next access would raise SIGBUS and
// end it); Attach refuses files that are not sealed so.
func TestPeerCannotTruncate(t *testing.T) {
	defer leakcheck.Check(t)()
	r := makeRing(t, "shared", page)
	defer r.Close()
	hf, df, err := r.Files()
	if err != nil {
		t.Fatal(err)
	}
	defer hf.Close()
	defer df.Close()
	for _, f := range []*os.File{hf, df} {
		if err := unix.Ftruncate(int(f.Fd()), 0); !errors.Is(err, unix.EPERM) {
			t.Fatalf("truncating the ring's %s: %v, want EPERM", f.Name(), err)
		}
	}
	// The same bytes in files that are not sealed.
	copies := make([]int, 2)
	for i, f := range []*os.File{hf, df} {
		var st unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &st); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, st.Size)
		if _, err := f.ReadAt(b, 0); err != nil {
			t.Fatal(err)
		}
		fd, err := unix.MemfdCreate("unsealed", unix.MFD_CLOEXEC)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		if _, err := unix.Pwrite(fd, b, 0); err != nil {
			t.Fatal(err)
		}
		copies[i] = fd
	}
	if q, err := Attach(copies[0], copies[1]); err == nil || !strings.Contains(err.Error(), "sealed") {
		if err == nil {
			q.Close()
		}
		t.Errorf("Attach of files not sealed against shrinking: %v, want a refusal naming the seal", err)
	}
}
