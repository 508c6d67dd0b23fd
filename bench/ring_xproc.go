package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mirrormem/mirrormem/examples/ringbuffer/ring"
)

// Between processes: the producer is this process, the consumer is the bench binary
// re-executed ("xproc" child), and the messages go through a ring made by ring.NewShared (the
// child attaches to its memfds), a Unix socket pair, or a pipe. The child checks every message
// as the in-process streams do (streamLoad.check) and reports how many it saw. The clock runs
// from the first message sent to the child's report; starting the child is not timed.

const (
	rowXRing     = "mirrored ring (NewShared): Reserve + Submit per 16 KiB, ReadRecords in place"
	rowXSock     = "Unix socket pair: write(2) per message, read(2) up to 64 KiB"
	rowXSockBuf  = "Unix socket pair: 64 KiB writes (bufio), read(2) up to 64 KiB"
	rowXPipe     = "pipe: write(2) per message, read(2) up to 64 KiB"
	rowXVmsplice = "pipe: vmsplice(2) per message, read(2) up to 64 KiB"
)

func init() { children["xproc"] = xprocChild }

// xprocKinds maps a row to the transport its child reads.
var xprocKinds = map[string]string{rowXRing: "ring", rowXSock: "stream", rowXSockBuf: "stream", rowXPipe: "stream", rowXVmsplice: "stream"}

// startXprocChild starts the consumer with files as fds 3, 4, ... and waits for it to be ready.
func startXprocChild(ctx context.Context, mode string, args string, files ...*os.File) (*exec.Cmd, *bufio.Reader, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, nil, err
	}
	cmd := exec.CommandContext(ctx, exe)
	cmd.Env = append(os.Environ(), childEnv+"=xproc", childArgsEnv+"="+mode+" "+args)
	cmd.ExtraFiles = files
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, nil, err
	}
	br := bufio.NewReader(out)
	if line, err := br.ReadString('\n'); err != nil || line != "ready\n" {
		cmd.Process.Kill()
		cmd.Wait()
		return nil, nil, fmt.Errorf("consumer process: %q, %v; %s", line, err, strings.TrimSpace(stderr.String()))
	}
	return cmd, br, nil
}

// finishXprocChild reads the child's last line ("ok N", or what it measured) and waits for it.
func finishXprocChild(cmd *exec.Cmd, br *bufio.Reader) (string, error) {
	line, rerr := br.ReadString('\n')
	werr := cmd.Wait()
	if rerr != nil || werr != nil {
		return "", fmt.Errorf("consumer process: %q, %v, %v; %v", line, rerr, werr, cmd.Stderr)
	}
	return strings.TrimSpace(line), nil
}

// xprocRing makes a shared ring of size bytes and the files a child attaches it from.
func xprocRing(size int) (*ring.Ring, []*os.File, error) {
	r, err := ring.NewShared(size)
	if err != nil {
		return nil, nil, err
	}
	hf, df, err := r.Files()
	if err != nil {
		r.Close()
		return nil, nil, err
	}
	return r, []*os.File{hf, df}, nil
}

// xprocConn makes a Unix socket pair, or a pipe: the consumer's end, for the child, and the
// producer's end.
func xprocConn(pipe bool) (consumer, producer *os.File, err error) {
	var fds [2]int
	if pipe {
		// The largest pipe an unprivileged process may ask for by default (1 MiB) would let a
		// pipe hold more than a ring; keep its default 64 KiB, what programs get.
		if err := unix.Pipe2(fds[:], unix.O_CLOEXEC); err != nil {
			return nil, nil, os.NewSyscallError("pipe2", err)
		}
	} else if fds, err = unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0); err != nil {
		return nil, nil, os.NewSyscallError("socketpair", err)
	}
	return os.NewFile(uintptr(fds[0]), "consumer-end"), os.NewFile(uintptr(fds[1]), "producer-end"), nil
}

// runXprocChild starts the consumer process in mode with args and files (closed here once the
// child has its copies, or on failure), then runs produce and reads the child's last line. It
// returns that line and the time from the start of produce to the line.
func runXprocChild(mode, args string, files []*os.File, produce func() error) (string, time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd, br, err := startXprocChild(ctx, mode, args, files...)
	for _, f := range files {
		f.Close() // the read end of a pipe or socket must not stay open here
	}
	if err != nil {
		return "", 0, err
	}
	t0 := time.Now()
	perr := produce()
	res, err := finishXprocChild(cmd, br)
	return res, time.Since(t0), errors.Join(perr, err)
}

// xprocStream measures one row of the cross-process stream case: GB/s.
func (l *streamLoad) xprocStream(rowName string) (float64, error) {
	var (
		produce func() error
		files   []*os.File
	)
	if rowName == rowXRing {
		r, fs, err := xprocRing(streamRingCap)
		if err != nil {
			return 0, err
		}
		defer r.Close()
		files = fs
		produce = func() error {
			pending := 0
			for i := range l.msgs {
				rec, err := r.Reserve(l.m)
				if err != nil {
					return err
				}
				copy(rec, l.src[i%16])
				if pending += l.m + 8; pending >= recSubmitEvery {
					r.Submit()
					pending = 0
				}
			}
			return r.CloseWrite()
		}
	} else {
		cf, pf, err := xprocConn(rowName == rowXPipe || rowName == rowXVmsplice)
		if err != nil {
			return 0, err
		}
		defer pf.Close() // a second Close after produce's is harmless
		files = []*os.File{cf}
		produce = func() error {
			defer pf.Close() // the consumer reads end of file
			return l.writeStream(rowName, int(pf.Fd()))
		}
	}
	res, d, err := runXprocChild(xprocKinds[rowName], fmt.Sprintf("%d %d", l.m, l.msgs), files, produce)
	if err != nil {
		return 0, err
	}
	if res != "ok "+strconv.Itoa(l.msgs) {
		return 0, fmt.Errorf("consumer process reported %q, want ok %d", res, l.msgs)
	}
	return float64(l.m*l.msgs) / d.Seconds() / 1e9, nil
}

// writeStream writes every message to the file descriptor wfd the way row rowName does.
func (l *streamLoad) writeStream(rowName string, wfd int) error {
	switch rowName {
	case rowXSockBuf:
		bw := bufio.NewWriterSize(fdWriter(wfd), 64<<10)
		for i := range l.msgs {
			bw.Write(l.src[i%16])
		}
		return bw.Flush()
	case rowXVmsplice:
		for i := range l.msgs {
			if err := vmspliceAll(wfd, l.src[i%16]); err != nil {
				return err
			}
		}
		return nil
	}
	w := fdWriter(wfd)
	for i := range l.msgs {
		if _, err := w.Write(l.src[i%16]); err != nil {
			return err
		}
	}
	return nil
}

// fdWriter writes to a blocking file descriptor with write(2).
type fdWriter int

func (w fdWriter) Write(p []byte) (int, error) {
	done := 0
	for done < len(p) {
		n, err := unix.Write(int(w), p[done:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return done, os.NewSyscallError("write", err)
		}
		done += n
	}
	return done, nil
}

// vmspliceAll hands p's pages to the pipe (vmsplice(2) without SPLICE_F_GIFT: the pipe refers
// to the pages, and the consumer's read(2) copies from them). p must not change until the
// consumer has read it: the sources of a stream never change.
func vmspliceAll(fd int, p []byte) error {
	for len(p) > 0 {
		iov := []unix.Iovec{{Base: &p[0]}}
		iov[0].SetLen(len(p))
		n, err := unix.Vmsplice(fd, iov, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return os.NewSyscallError("vmsplice", err)
		}
		p = p[n:]
	}
	return nil
}

// xprocChild is the consumer process: "ring m msgs" (fds 3, 4: the ring's files) or
// "stream m msgs" (fd 3: a socket or pipe), or the latency modes (ring_latency.go).
func xprocChild(arg string) int {
	f := strings.Fields(arg)
	if len(f) < 1 {
		fmt.Fprintln(os.Stderr, "xproc child: no mode")
		return 2
	}
	if strings.HasPrefix(f[0], "lat-") {
		return latencyChild(f)
	}
	if len(f) != 3 {
		fmt.Fprintln(os.Stderr, "xproc child: want mode, message size and count, got", arg)
		return 2
	}
	m, _ := strconv.Atoi(f[1])
	msgs, _ := strconv.Atoi(f[2])
	l := newStreamLoad(m, msgs)
	var seen int
	var err error
	switch f[0] {
	case "ring":
		var r *ring.Ring
		if r, err = ring.Attach(3, 4); err != nil {
			break
		}
		defer r.Close()
		fmt.Println("ready")
		for err == nil {
			var cerr error
			_, err = r.ReadRecords(func(rec []byte) bool {
				cerr = l.check(seen, rec)
				seen++
				return cerr == nil
			})
			if cerr != nil {
				err = cerr
			}
		}
		if err == io.EOF {
			err = nil
		}
	case "stream":
		fmt.Println("ready")
		buf := make([]byte, 64<<10+m)
		have := 0
		for {
			n, rerr := unix.Read(3, buf[have:])
			if rerr == unix.EINTR {
				continue
			}
			if rerr != nil {
				err = os.NewSyscallError("read", rerr)
				break
			}
			if n == 0 {
				break
			}
			have += n
			k := have / m
			for j := range k {
				if err = l.check(seen, buf[j*m:(j+1)*m]); err != nil {
					break
				}
				seen++
			}
			if err != nil {
				break
			}
			have = copy(buf, buf[k*m:have])
		}
	default:
		err = fmt.Errorf("unknown mode %q", f[0])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "xproc child:", err)
		return 1
	}
	fmt.Println("ok", seen)
	return 0
}
