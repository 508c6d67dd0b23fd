package mirror

import "fmt"

// Backend is the way a mirror view is made.
type Backend int

const (
	// BackendDuplicate makes each mirror view with mremap(addr, 0, n, MREMAP_MAYMOVE[|MREMAP_FIXED])
	// (the "duplicate"): no file descriptor needed, works for MAP_SHARED|MAP_ANONYMOUS, memfd and
	// shared file mappings. The default.
	BackendDuplicate Backend = iota
	// BackendMemfd maps the memory's file descriptor again with mmap(MAP_SHARED[|MAP_FIXED]):
	// for memory that is already a memfd (alloc.Memfd, alloc.FromFD), and the fallback where the
	// kernel refuses the duplicate. Memory without a descriptor (alloc.Shared) cannot use it
	// (ErrUnsupported); Of reaches the descriptor of a mapping through /proc/self/map_files,
	// which needs CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE.
	BackendMemfd
)

// String names the backend ("duplicate", "memfd").
func (b Backend) String() string {
	switch b {
	case BackendDuplicate:
		return "duplicate"
	case BackendMemfd:
		return "memfd"
	}
	return fmt.Sprintf("Backend(%d)", int(b))
}
