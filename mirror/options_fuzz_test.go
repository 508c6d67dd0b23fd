package mirror

import (
	"encoding/binary"
	"errors"
	"math"
	"testing"
	"time"

	"github.com/mirrormem/mirrormem/alloc"
	"github.com/mirrormem/mirrormem/internal/leakcheck"
)

// optionSet decodes a fuzzer's bytes into a list of options, their numeric arguments taken from
// the input (extremes included), so that any combination, in any order, can be tried.
func optionSet(data []byte) []Option {
	var opts []Option
	next := func() int64 {
		if len(data) < 8 {
			data = nil
			return math.MaxInt64
		}
		v := int64(binary.LittleEndian.Uint64(data))
		data = data[8:]
		return v
	}
	for len(data) > 0 && len(opts) < 12 {
		op := data[0] % 14
		data = data[1:]
		switch op {
		case 0:
			opts = append(opts, nil)
		case 1:
			opts = append(opts, ServeFaults(nil))
		case 2:
			opts = append(opts, FaultAround(int(next())))
		case 3:
			opts = append(opts, VerifyFaults(int(next())))
		case 4:
			opts = append(opts, Watchdog(time.Duration(next())))
		case 5:
			opts = append(opts, WithHandler(Handler(next())))
		case 6:
			opts = append(opts, Views(int(next())))
		case 7:
			opts = append(opts, Adjacent())
		case 8:
			opts = append(opts, WithBackend(Backend(next())))
		case 9:
			opts = append(opts, TrackWrites())
		case 10:
			opts = append(opts, TrackWritesAsync())
		case 11:
			opts = append(opts, StageMinorFaults())
		case 12:
			opts = append(opts, CloseRegion())
		case 13:
			opts = append(opts, Views(2+int(next()&3)))
		}
	}
	return opts
}

// Any set of options, however absurd, gives a working pair or an error that matches one of the
// package's sentinels; never a panic, and nothing left behind either way.
func FuzzOptions(f *testing.F) {
	le := func(v int64) []byte { return binary.LittleEndian.AppendUint64(nil, uint64(v)) }
	cat := func(parts ...[]byte) []byte {
		var b []byte
		for _, p := range parts {
			b = append(b, p...)
		}
		return b
	}
	f.Add([]byte{0})
	f.Add([]byte{1})
	f.Add(cat([]byte{1, 3}, le(0x0800000000000010)))
	f.Add(cat([]byte{1, 3}, le(math.MaxInt64)))
	f.Add(cat([]byte{1, 3}, le(MaxFaultLog)))
	f.Add(cat([]byte{4}, le(0)))
	f.Add(cat([]byte{1, 5}, le(int64(HandlerGo)), []byte{4}, le(1)))
	f.Add(cat([]byte{1, 2}, le(math.MinInt64)))
	f.Add(cat([]byte{1, 2}, le(math.MaxInt64)))
	f.Add(cat([]byte{6}, le(math.MaxInt64), []byte{7}))
	f.Add(cat([]byte{6}, le(-1)))
	f.Add(cat([]byte{13}, le(1), []byte{7, 1, 9}))
	f.Add(cat([]byte{1, 5}, le(int64(HandlerProcess)), []byte{3}, le(16), []byte{9}))
	f.Add(cat([]byte{8}, le(math.MaxInt64), []byte{1}))
	f.Add([]byte{1, 11, 10, 12, 7})
	f.Add(cat([]byte{1, 5}, le(math.MinInt64)))
	sentinels := []error{ErrOption, ErrRange, ErrUnsupported, ErrNotShared, ErrNotMapped, ErrPastObject, ErrResident, ErrClosed}
	f.Fuzz(func(t *testing.T, data []byte) {
		const n = 4 * 4096
		opts := optionSet(data)
		r := shared(t, n, alloc.WithRoom(3*n))
		defer r.Close()
		done := leakcheck.CheckShared(t)
		defer done()
		p, err := Mirror(r, opts...)
		if err != nil {
			for _, s := range sentinels {
				if errors.Is(err, s) {
					return
				}
			}
			t.Fatalf("Mirror: %v matches none of the package's errors", err)
		}
		if p.FaultHandler() != HandlerGo { // the in-process handler's watchdog has its own tests
			for i := 0; i < 2; i++ {
				loopSum(p.View(i)) // served by whichever handler the options chose
			}
		}
		if err := p.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
	})
}
