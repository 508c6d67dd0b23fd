package uffd

import (
	"context"
	"testing"
)

// BenchmarkPrefetchLocal prefetches 64 MiB of shared memory from a source in memory with the
// default options: the window must not slow a local source down (it should read MaxRange at
// a time, InFlight reads at once).
func BenchmarkPrefetchLocal(b *testing.B) {
	const n = 64 << 20
	b.SetBytes(n)
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		u := srvUFFD(b, FeatureMissingShmem)
		a := srvShared(b, n)
		srvRegister(b, u, a, n, ModeMissing)
		s := NewServer(u, WithPrefetch())
		if err := s.Handle(a, n, pattern{seed: 5}); err != nil {
			b.Fatal(err)
		}
		run, _ := srvStart(b, s)
		b.StartTimer()
		st, err := s.Prefetch(context.Background(), a, []PrefetchRange{{0, n}}, PrefetchOptions{})
		b.StopTimer()
		if err != nil || st.Filled != n/int64(srvPage) {
			b.Fatalf("Prefetch: %+v, %v", st, err)
		}
		srvStopOK(b, run)
		srvUnmap(b, a, n)
		u.Close()
		b.StartTimer()
	}
}
