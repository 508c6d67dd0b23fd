package mirror

import (
	"testing"

	"github.com/mirrormem/mirrormem/alloc"
)

// BenchmarkOf measures Of (which reads /proc/self/maps and, where allowed, fstats the object
// through /proc/self/map_files) against Mirror of the same region (no look-up), non-adjacent.
func BenchmarkOf(b *testing.B) {
	r, err := alloc.Shared(ringSize)
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	b.Run("Mirror", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			p, err := Mirror(r)
			if err != nil {
				b.Fatal(err)
			}
			p.Close()
		}
	})
	b.Run("Of", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			p, err := Of(r.Bytes())
			if err != nil {
				b.Fatal(err)
			}
			p.Close()
		}
	})
}
