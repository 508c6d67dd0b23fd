package fault

import (
	"testing"

	"golang.org/x/sys/unix"

	"github.com/mirrormem/mirrormem/uffd"
)

// Kernel fact: a duplicate made with mremap does not inherit the registration of its source
// unless the userfaultfd negotiated EVENT_REMAP: touching it raises no fault, the kernel fills
// the page itself (zeros). That is why every view is registered explicitly.
func TestDuplicateDoesNotInheritRegistration(t *testing.T) {
	const n = 2 * pg
	orig, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(orig)
	u, err := uffd.New(uffd.WithFeatures(uffd.FeatureMissingShmem))
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	if err := u.Register(addrOf(orig), n, uffd.ModeMissing); err != nil {
		t.Fatal(err)
	}
	dup := duplicate(t, orig)
	if sum(dup) != 0 { // would block forever if the duplicate were registered: nobody serves it
		t.Fatal("unregistered duplicate is not zero")
	}
	var msgs [4]uffd.Msg
	if k, err := u.TryReadMessages(msgs[:]); err != nil || k != 0 {
		t.Fatalf("touching the duplicate raised %d messages (%v); want none", k, err)
	}
	if sum(orig) != 0 { // the page is now in the page cache: no MISSING fault through the original either
		t.Fatal("original is not zero")
	}
}

// With EVENT_REMAP the duplicate stays registered, the monitor gets a REMAP event whose length
// is 0 (a duplicate, not a move), and mremap blocks until that event is read.
func TestRemapEventOfADuplicate(t *testing.T) {
	const n = 2 * pg
	orig, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(orig)
	u, err := uffd.New(uffd.WithFeatures(uffd.FeatureMissingShmem | uffd.FeatureEventRemap))
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	if err := u.Register(addrOf(orig), n, uffd.ModeMissing); err != nil {
		t.Fatal(err)
	}
	got := make(chan []byte)
	go func() { got <- duplicate(t, orig) }() // blocks in mremap until the event is read
	var msgs [4]uffd.Msg
	k, err := u.ReadMessages(msgs[:])
	if err != nil || k != 1 || msgs[0].Event() != uffd.EventRemap {
		t.Fatalf("want one REMAP event, got %d (%v): %v", k, err, msgs[0].String())
	}
	from, to, length := msgs[0].Remap()
	dup := <-got
	if from != addrOf(orig) || to != addrOf(dup) || length != 0 {
		t.Fatalf("REMAP from %#x to %#x len %d; want %#x to %#x len 0", from, to, length, addrOf(orig), addrOf(dup))
	}
	// The duplicate is registered: serve its fault and see it arrive.
	h, err := StartNative(Config{UFFD: u, Views: []uintptr{addrOf(orig), addrOf(dup)}, Len: n, AliasFD: -1})
	if err != nil {
		if NativeAvailable {
			t.Fatal(err)
		}
		h, err = StartProcess(Config{UFFD: u, Views: []uintptr{addrOf(orig), addrOf(dup)}, Len: n, AliasFD: -1}, ProcessOptions{NoStandby: true})
		if err != nil {
			t.Fatal(err)
		}
	}
	defer h.Stop()
	sum(dup)
	if s := h.Stats(); s.Views[1].Missing != n/pg {
		t.Errorf("a fault through the duplicate was not reported: %+v", s.Views[1])
	}
}
