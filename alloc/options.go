package alloc

import "fmt"

// Option configures Shared, Memfd and FromFD.
type Option func(*config)

type config struct {
	populate  bool
	hugePages bool
	room      int
	err       error
}

// Populate pre-faults every page of the region for writing with MADV_POPULATE_WRITE (Linux
// 5.14+) before the constructor returns, so the first touch of each page costs no page fault.
// On an older kernel the constructor fails with ErrUnsupported rather than touching every page
// itself; if memory runs out while populating, it fails and maps nothing.
func Populate() Option { return func(c *config) { c.populate = true } }

// HugePages asks for transparent huge pages (MADV_HUGEPAGE) for the region's shmem pages. The
// administrator decides whether shmem may use them, in
// /sys/kernel/mm/transparent_hugepage/shmem_enabled: with "never" or "deny" (or a kernel
// without transparent huge pages) the constructor fails with ErrUnsupported naming the
// setting. Huge pages are used only for the parts of the region aligned to the huge page size
// (2 MiB on x86-64); use sizes that are multiples of it.
func HugePages() Option { return func(c *config) { c.hugePages = true } }

// WithRoom reserves n more bytes of address space (rounded up to pages) right after the
// region: inaccessible (PROT_NONE), using no memory, owned by the region and released by its
// Close. A view of the region can later be mapped into it with Lend, which is how
// mirror.Mirror(r, mirror.Adjacent()) places the mirror exactly at the region's end without
// racing other mmap calls. For a region with k adjacent mirrors, reserve k*size.
func WithRoom(n int) Option {
	return func(c *config) {
		if n < 0 {
			c.err = fmt.Errorf("%w: WithRoom(%d): the room cannot be negative", ErrSize, n)
		}
		c.room = n
	}
}
