package uffd

import (
	"errors"
	"strings"
	"testing"

	"github.com/mirrormem/mirrormem/internal/leakcheck"
	"golang.org/x/sys/unix"
)

// A hugetlb range is refused up front: with an empty huge page pool the kernel answers a
// huge COPY with EEXIST although nothing is mapped, and a base-page COPY with EINVAL.
func TestServerRefusesHugetlb(t *testing.T) {
	defer leakcheck.Check(t)()
	const huge = 2 << 20
	mem, err := unix.Mmap(-1, 0, huge, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_HUGETLB|unix.MAP_NORESERVE)
	if err != nil {
		t.Skipf("kernel without hugetlb support (CONFIG_HUGETLBFS): %v", err)
	}
	defer unix.Munmap(mem)
	u, err := New()
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	s := NewServer(u)
	defer s.Close()
	err = s.Handle(AddrOf(mem), huge, nil)
	var re *RangeError
	if !errors.As(err, &re) || !strings.Contains(err.Error(), "hugetlb") {
		t.Fatalf("Handle on hugetlb memory = %v, want a RangeError naming hugetlb", err)
	}
	if st := s.Stats(); len(st) != 0 {
		t.Fatalf("refused range is in the table: %+v", st)
	}
}
