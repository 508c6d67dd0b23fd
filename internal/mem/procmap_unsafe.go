package mem

import (
	"bytes"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// procmapQuery is struct procmap_query of <linux/fs.h> (6.11+): one binary look-up of the VMA
// covering (or following) an address, far cheaper than generating and parsing the text of
// /proc/self/maps.
type procmapQuery struct {
	Size        uint64
	QueryFlags  uint64
	QueryAddr   uint64
	VMAStart    uint64
	VMAEnd      uint64
	VMAFlags    uint64
	VMAPageSize uint64
	VMAOffset   uint64
	Inode       uint64
	DevMajor    uint32
	DevMinor    uint32
	VMANameSize uint32
	BuildIDSize uint32
	VMANameAddr uint64
	BuildIDAddr uint64
}

const (
	procmapQueryIoctl   = 0xC0686611 // _IOWR('f', 17, struct procmap_query)
	pmReadable          = 0x01
	pmWritable          = 0x02
	pmExecutable        = 0x04
	pmShared            = 0x08
	pmCoveringOrNextVMA = 0x10
)

// queryBuf is what one PROCMAP_QUERY look-up hands the kernel. Its buffers come from a pool,
// so they are on the heap (escape analysis would otherwise put them on a goroutine stack,
// which can move) and are reused across look-ups.
type queryBuf struct {
	q    procmapQuery
	name [4096]byte
}

var queryBufs = sync.Pool{New: func() any { return new(queryBuf) }}

var noProcmapQuery atomic.Bool // set once the kernel says it lacks PROCMAP_QUERY

// queryVMAs is FindVMAs with PROCMAP_QUERY. ok is false if the kernel lacks it.
func queryVMAs(start, end uintptr) (out []VMA, ok bool, err error) {
	if noProcmapQuery.Load() {
		return nil, false, nil
	}
	fd, err := unix.Open("/proc/self/maps", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, false, &os.PathError{Op: "open", Path: "/proc/self/maps", Err: err}
	}
	defer unix.Close(fd)
	// The kernel writes the name through an address that travels inside the struct as an
	// integer, which the garbage collector and the stack copier cannot see: the buffer (and
	// the struct) live on the heap, where nothing moves them, and are kept alive across the
	// system call.
	buf := queryBufs.Get().(*queryBuf)
	defer queryBufs.Put(buf)
	q, name := &buf.q, &buf.name
	for addr := start; addr < end; {
		*q = procmapQuery{
			Size:        uint64(unsafe.Sizeof(procmapQuery{})),
			QueryFlags:  pmCoveringOrNextVMA,
			QueryAddr:   uint64(addr),
			VMANameSize: uint32(len(name)),
			VMANameAddr: uint64(uintptr(unsafe.Pointer(&name[0]))),
		}
		_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), procmapQueryIoctl, uintptr(unsafe.Pointer(q)))
		runtime.KeepAlive(name)
		switch e {
		case 0:
		case unix.ENOENT: // no VMA at or after addr
			return out, true, nil
		case unix.ENOTTY, unix.EINVAL:
			if len(out) == 0 && addr == start {
				noProcmapQuery.Store(true)
				return nil, false, nil
			}
			return nil, false, os.NewSyscallError("ioctl(PROCMAP_QUERY)", e)
		default:
			return nil, false, os.NewSyscallError("ioctl(PROCMAP_QUERY)", e)
		}
		if uintptr(q.VMAStart) >= end {
			break
		}
		v := VMA{
			Start:    uintptr(q.VMAStart),
			End:      uintptr(q.VMAEnd),
			Perms:    perms(q.VMAFlags),
			Offset:   q.VMAOffset,
			Dev:      fmt.Sprintf("%02x:%02x", q.DevMajor, q.DevMinor),
			Inode:    q.Inode,
			PageSize: int(q.VMAPageSize),
		}
		if q.VMANameSize > 0 {
			n := name[:q.VMANameSize]
			if i := bytes.IndexByte(n, 0); i >= 0 {
				n = n[:i]
			}
			v.Path = string(n)
		}
		out = append(out, v)
		addr = v.End
	}
	return out, true, nil
}

func perms(f uint64) string {
	p := []byte("---p")
	if f&pmReadable != 0 {
		p[0] = 'r'
	}
	if f&pmWritable != 0 {
		p[1] = 'w'
	}
	if f&pmExecutable != 0 {
		p[2] = 'x'
	}
	if f&pmShared != 0 {
		p[3] = 's'
	}
	return string(p)
}
