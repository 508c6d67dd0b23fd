package httpsrc

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// envServer makes the test binary a range server (serveInChild) instead of running tests.
const envServer = "HTTPSRC_TEST_SERVER"

func TestMain(m *testing.M) {
	if os.Getenv(envServer) != "" {
		os.Exit(serveInChild())
	}
	os.Exit(m.Run())
}

// serveInChild serves the benchmark's object on loopback, prints its URL, and serves until its
// standard input ends.
func serveInChild() int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	o := newObject(benchSize, 99)
	go http.Serve(ln, o.serveRange(false))
	fmt.Printf("http://%s/object\n", ln.Addr())
	io.Copy(io.Discard, os.Stdin)
	return 0
}

const benchSize = 64 << 20

// startChildServer runs serveInChild in a child process and returns the object's URL; the
// child ends with the benchmark.
func startChildServer(b *testing.B) string {
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), envServer+"=1")
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		in.Close()
		cmd.Wait()
	})
	url, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		b.Fatalf("the server process printed no URL: %v", err)
	}
	return strings.TrimSpace(url)
}

// BenchmarkReadAtServerProcess reads 4 KiB pages, one reader at a time, from a server in
// another process, on the Source's own connections and through net/http's Transport (as HTTPS
// is read). cpu-µs/op is the CPU time of this process, the client alone, per read: what a
// handler process spends per request (BenchmarkReadAt's server shares the process and hides
// the difference).
func BenchmarkReadAtServerProcess(b *testing.B) {
	url := startChildServer(b)
	for _, transport := range []bool{false, true} {
		s, err := New(Config{URL: url})
		if err != nil {
			b.Fatal(err)
		}
		name := "4KiB"
		if transport {
			s.direct = nil
			name += "-transport"
		}
		b.Run(name, func(b *testing.B) { readInOrder(b, s, 4<<10) })
		s.Close()
	}
}

// BenchmarkReadAt reads page-aligned 4 KiB pages and 2 MiB fault-around windows from a local
// server, one reader at a time and from parallel readers, on the Source's own connections and
// (the -transport rows) through net/http's Transport, as HTTPS is read. cpu-µs/op is the CPU
// time of the whole process (the test server's included) per read.
func BenchmarkReadAt(b *testing.B) {
	const size = benchSize
	o := newObject(size, 99)
	srv := startServer(b, o.serveRange(false))
	direct := open(b, srv, Config{})
	transport := open(b, srv, Config{})
	transport.direct = nil
	for _, n := range []int{4 << 10, 2 << 20} {
		for _, s := range []*Source{direct, transport} {
			name := fmt.Sprintf("%dKiB", n>>10)
			if s.direct == nil {
				name += "-transport"
			}
			b.Run(name, func(b *testing.B) { readInOrder(b, s, n) })
			b.Run(name+"-parallel", func(b *testing.B) {
				b.SetBytes(int64(n))
				b.ReportAllocs()
				b.RunParallel(func(pb *testing.PB) {
					p := make([]byte, n)
					off := int64(0)
					for pb.Next() {
						if _, err := s.ReadAt(p, off); err != nil {
							b.Error(err)
							return
						}
						off = (off + int64(n)) % size
					}
				})
			})
		}
	}
}

// readInOrder reads the object n bytes at a time, in order, one read at a time, and reports
// cpu-µs/op, this process's CPU time per read.
func readInOrder(b *testing.B, s *Source, n int) {
	p := make([]byte, n)
	b.SetBytes(int64(n))
	b.ReportAllocs()
	off := int64(0)
	c0 := cpuTime()
	for b.Loop() {
		if _, err := s.ReadAt(p, off); err != nil {
			b.Fatal(err)
		}
		off = (off + int64(n)) % benchSize
	}
	b.ReportMetric(float64(cpuTime()-c0)/1e3/float64(b.N), "cpu-µs/op")
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
