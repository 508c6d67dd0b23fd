package ring

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/mirrormem/mirrormem/internal/leakcheck"
)

// Model-based tests: one goroutine drives both sides of a non-blocking ring with a random mix
// of operations and random sizes, and a model (queues of what each side has done) predicts
// every answer: which bytes a read returns, when a call must say ErrWouldBlock, how many bytes
// are readable. Every byte read is checked.

// recordBytes is the content of record seq: every byte a function of (seq, i).
func recordBytes(seq uint64, n int) []byte {
	b := make([]byte, n)
	(&stream{seed: seq, off: seq * 7919}).fill(b)
	return b
}

type modelRec struct {
	seq  uint64
	data []byte
}

func (m modelRec) size() uint64 { return recordSize(uint64(len(m.data))) }

// recordModel is what the ring should hold, as the producer and the consumer see it.
type recordModel struct {
	n         uint64
	pending   []modelRec // reserved, not submitted
	published []modelRec // submitted, not yet returned to the consumer
	cur       *modelRec  // returned by NextRecord, not yet released
	relUnpub  uint64     // released by the consumer, not yet published back
}

func sum(rs []modelRec) (t uint64) {
	for _, r := range rs {
		t += r.size()
	}
	return t
}

// inRing is every byte the producer cannot reuse yet.
func (m *recordModel) inRing() uint64 {
	t := sum(m.pending) + sum(m.published) + m.relUnpub
	if m.cur != nil {
		t += m.cur.size()
	}
	return t
}

// readable is what Len reports: published and not yet given back by the consumer.
func (m *recordModel) readable() uint64 { return m.inRing() - sum(m.pending) }

func (m *recordModel) submit() { m.published, m.pending = append(m.published, m.pending...), nil }

// releaseCur is what NextRecord and ReadRecords do first; publish says whether the tail is
// published at once (Release) or once enough has gathered (NextRecord).
func (m *recordModel) releaseCur(publish bool) {
	if m.cur != nil {
		m.relUnpub += m.cur.size()
		m.cur = nil
		if m.relUnpub >= m.n/8 {
			publish = true
		}
	}
	if publish {
		m.relUnpub = 0
	}
}

func TestRecordsModel(t *testing.T) {
	defer leakcheck.Check(t)()
	for _, kind := range []string{"local", "shared"} {
		for seed := uint64(1); seed <= 6; seed++ {
			t.Run(fmt.Sprintf("%s/seed%d", kind, seed), func(t *testing.T) {
				r := makeRing(t, kind, 3*page, NonBlocking())
				defer r.Close()
				if seed%2 == 0 {
					r.setPositions(2*r.n - 24) // the index space wraps within the first records
				}
				runRecordsModel(t, r, rand.New(rand.NewPCG(seed, 42)), 4000)
			})
		}
	}
}

func runRecordsModel(t *testing.T, r *Ring, rng *rand.Rand, ops int) {
	m := &recordModel{n: uint64(r.Cap())}
	var seq uint64
	check := func(what string, got []byte, want modelRec) {
		t.Helper()
		if !bytes.Equal(got, want.data) {
			t.Fatalf("%s: record %d: got %d bytes, want %d (or different bytes)", what, want.seq, len(got), len(want.data))
		}
	}
	for op := 0; op < ops; op++ {
		switch k := rng.IntN(10); {
		case k < 4: // Reserve, sometimes several before a Submit
			n := randSize(rng, r.MaxRecord())
			want := modelRec{seq: seq, data: recordBytes(seq, n)}
			rec, err := r.Reserve(n)
			if free := m.n - m.inRing(); free >= want.size() {
				if err != nil || len(rec) != n {
					t.Fatalf("op %d: Reserve(%d) with %d bytes free: %d bytes, %v", op, n, free, len(rec), err)
				}
				copy(rec, want.data)
				m.pending = append(m.pending, want)
				seq++
			} else {
				if !errors.Is(err, ErrWouldBlock) {
					t.Fatalf("op %d: Reserve(%d) with %d bytes free: %v, want ErrWouldBlock", op, n, free, err)
				}
				m.submit() // a Reserve that would wait submits what was reserved
			}
		case k < 5:
			if err := r.Submit(); err != nil {
				t.Fatal(err)
			}
			m.submit()
		case k < 7:
			rec, err := r.NextRecord()
			m.releaseCur(false)
			if len(m.published) == 0 {
				if !errors.Is(err, ErrWouldBlock) {
					t.Fatalf("op %d: NextRecord on an empty ring: %d bytes, %v", op, len(rec), err)
				}
				m.relUnpub = 0 // published before it would wait
				break
			}
			if err != nil {
				t.Fatalf("op %d: NextRecord: %v", op, err)
			}
			cur := m.published[0]
			m.published = m.published[1:]
			m.cur = &cur
			check("NextRecord", rec, cur)
		case k < 8:
			if err := r.Release(); err != nil {
				t.Fatal(err)
			}
			m.releaseCur(true)
		default: // ReadRecords, sometimes stopping early
			stop := rng.IntN(8)
			seen := 0
			want := m.published
			_, err := r.ReadRecords(func(rec []byte) bool {
				if seen >= len(want) {
					t.Fatalf("op %d: ReadRecords gave a record the model does not have", op)
				}
				check("ReadRecords", rec, want[seen])
				seen++
				return seen != stop
			})
			m.releaseCur(false)
			if len(want) == 0 {
				if !errors.Is(err, ErrWouldBlock) {
					t.Fatalf("op %d: ReadRecords on an empty ring: %v", op, err)
				}
			} else if err != nil {
				t.Fatalf("op %d: ReadRecords: %v", op, err)
			} else if exp := len(want); stop != 0 && stop < exp {
				if seen != stop {
					t.Fatalf("op %d: ReadRecords saw %d records, fn stopped it at %d", op, seen, stop)
				}
			} else if seen != exp {
				t.Fatalf("op %d: ReadRecords saw %d of %d records", op, seen, exp)
			}
			m.published = m.published[seen:]
			m.relUnpub = 0 // ReadRecords publishes what it released
		}
		if got := uint64(r.Len()); got != m.readable() {
			t.Fatalf("op %d: Len %d, model %d", op, got, m.readable())
		}
	}
	// CloseWrite submits what is reserved; the consumer then reads everything, then io.EOF.
	if err := r.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	m.submit()
	for {
		rec, err := r.NextRecord()
		if err == io.EOF {
			break
		}
		if err != nil || len(m.published) == 0 {
			t.Fatalf("draining: %d bytes, %v with %d records left in the model", len(rec), err, len(m.published))
		}
		check("drain", rec, m.published[0])
		m.published = m.published[1:]
	}
	if len(m.published) != 0 {
		t.Fatalf("io.EOF with %d records unread", len(m.published))
	}
}

// streamModel is the byte-stream counterpart: bytes written through a Writer (pending until
// published) and through Write, read through ReadSlice/Consume and Read.
func TestStreamModel(t *testing.T) {
	defer leakcheck.Check(t)()
	for _, kind := range []string{"local", "shared"} {
		for seed := uint64(1); seed <= 4; seed++ {
			t.Run(fmt.Sprintf("%s/seed%d", kind, seed), func(t *testing.T) {
				r := makeRing(t, kind, 3*page, NonBlocking())
				defer r.Close()
				if seed%2 == 0 {
					r.setPositions(2*r.n - 5)
				}
				rng := rand.New(rand.NewPCG(seed, 7))
				every := 1 + rng.IntN(r.Cap())
				w := NewWriter(r, every)
				src, dst := &stream{seed: seed}, &stream{seed: seed}
				var pending, published int // bytes in the ring: not yet published, published and unread
				n := r.Cap()
				for op := 0; op < 2000; op++ {
					switch k := rng.IntN(10); {
					case k < 3: // Writer.Write
						p := make([]byte, randSize(rng, n+n/2))
						src0 := *src
						src.fill(p)
						got, err := w.Write(p)
						free := n - pending - published
						want := min(len(p), free)
						pending += want
						if pending >= every {
							published, pending = published+pending, 0
						}
						if want < len(p) {
							published, pending = published+pending, 0 // published before it would wait
							if !errors.Is(err, ErrWouldBlock) {
								t.Fatalf("op %d: Writer.Write(%d) with %d free: %d, %v, want ErrWouldBlock", op, len(p), free, got, err)
							}
						} else if err != nil {
							t.Fatalf("op %d: Writer.Write: %v", op, err)
						}
						if got != want {
							t.Fatalf("op %d: Writer.Write(%d) with %d free wrote %d", op, len(p), free, got)
						}
						*src = src0
						src.fill(p[:got]) // the stream goes on after the bytes written
					case k < 4:
						if err := w.Flush(); err != nil {
							t.Fatal(err)
						}
						published, pending = published+pending, 0
					case k < 5: // Ring.Write publishes everything
						p := make([]byte, randSize(rng, n/2))
						src0 := *src
						src.fill(p)
						got, err := r.Write(p)
						free := n - pending - published
						if want := min(len(p), free); got != want || (want < len(p)) != errors.Is(err, ErrWouldBlock) {
							t.Fatalf("op %d: Write(%d) with %d free: %d, %v", op, len(p), free, got, err)
						}
						published, pending = published+pending+got, 0
						*src = src0
						src.fill(p[:got])
					case k < 8: // ReadSlice and Consume a random part
						s, err := r.ReadSlice()
						if published == 0 {
							if !errors.Is(err, ErrWouldBlock) {
								t.Fatalf("op %d: ReadSlice on an empty ring: %d, %v", op, len(s), err)
							}
							break
						}
						if err != nil || len(s) != published {
							t.Fatalf("op %d: ReadSlice: %d bytes, %v; model %d", op, len(s), err, published)
						}
						c := rng.IntN(len(s) + 1)
						if err := dst.check(s[:c]); err != nil {
							t.Fatalf("op %d: %v", op, err)
						}
						if err := r.Consume(c); err != nil {
							t.Fatal(err)
						}
						published -= c
					default: // Read
						p := make([]byte, randSize(rng, n))
						got, err := r.Read(p)
						if published == 0 && len(p) > 0 {
							if !errors.Is(err, ErrWouldBlock) {
								t.Fatalf("op %d: Read on an empty ring: %d, %v", op, got, err)
							}
							break
						}
						// io.Reader may return fewer bytes than are readable, never none.
						if want := min(len(p), published); got < 1 || got > want || err != nil {
							t.Fatalf("op %d: Read(%d) with %d readable: %d, %v", op, len(p), published, got, err)
						}
						if err := dst.check(p[:got]); err != nil {
							t.Fatalf("op %d: %v", op, err)
						}
						published -= got
					}
					if got := r.Len(); got != published {
						t.Fatalf("op %d: Len %d, model %d (pending %d)", op, got, published, pending)
					}
				}
				if err := r.CloseWrite(); err != nil {
					t.Fatal(err)
				}
				published += pending
				rest, err := io.ReadAll(r)
				if err != nil || len(rest) != published {
					t.Fatalf("after CloseWrite: %d bytes, %v; model %d", len(rest), err, published)
				}
				if err := dst.check(rest); err != nil {
					t.Fatal(err)
				}
			})
		}
	}
}

// TestRecordsConcurrent: a producer and a consumer goroutine on a blocking ring, each with a
// random mix of the record calls and random sizes (up to MaxRecord), every byte checked.
func TestRecordsConcurrent(t *testing.T) {
	defer leakcheck.Check(t)()
	for _, kind := range []string{"local", "shared"} {
		t.Run(kind, func(t *testing.T) {
			r := makeRing(t, kind, 3*page)
			defer r.Close()
			const total = 5000
			errc := make(chan error, 1)
			go func() {
				rng, sizes := rand.New(rand.NewPCG(1, 2)), rand.New(rand.NewPCG(3, 4))
				for seq := uint64(0); seq < total; seq++ {
					rec, err := r.Reserve(randSize(sizes, r.MaxRecord()) - 1)
					if err != nil {
						errc <- err
						return
					}
					copy(rec, recordBytes(seq, len(rec)))
					if rng.IntN(3) == 0 {
						r.Submit()
					}
				}
				errc <- r.CloseWrite()
			}()
			rng := rand.New(rand.NewPCG(5, 6))
			var seq uint64
			sizes := rand.New(rand.NewPCG(3, 4)) // replays the producer's sizes
			next := func(rec []byte) error {
				want := recordBytes(seq, randSize(sizes, r.MaxRecord())-1)
				if !bytes.Equal(rec, want) {
					return fmt.Errorf("record %d: %d bytes, want %d (or different bytes)", seq, len(rec), len(want))
				}
				seq++
				return nil
			}
			for failed := false; ; {
				var err error
				switch rng.IntN(3) {
				case 0:
					var rec []byte
					if rec, err = r.NextRecord(); err == nil {
						err = next(rec)
					}
				case 1:
					stop := rng.IntN(5)
					var cerr error
					seen := 0
					_, err = r.ReadRecords(func(rec []byte) bool {
						cerr = next(rec)
						seen++
						return cerr == nil && seen != stop
					})
					if cerr != nil {
						err = cerr
					}
				default:
					err = r.Release()
				}
				if err == io.EOF {
					break
				}
				if err != nil {
					// Keep reading: a Close here would unmap the ring under the producer's
					// copy into its reserved record.
					if !failed {
						t.Error(err)
					}
					failed, next = true, func([]byte) error { return nil }
				}
			}
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
			if seq != total {
				t.Fatalf("consumer saw %d records, want %d", seq, total)
			}
		})
	}
}
