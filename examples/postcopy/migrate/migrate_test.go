package migrate

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mirrormem/mirrormem/internal/leakcheck"
)

func TestMain(m *testing.M) {
	MaybeDestination() // the destination processes Run starts are this test binary
	os.Exit(m.Run())
}

func TestPostCopy(t *testing.T) {
	defer leakcheck.Check(t)()
	rep, err := Run(Config{ImageSize: 16 << 20, DestTouches: 512})
	if err != nil {
		t.Fatalf("%v\n%v", err, rep)
	}
	t.Log("\n" + rep.String())
	if rep.VerifiedPages != rep.Pages || rep.Pages != 4096 {
		t.Errorf("verified %d of %d pages, want 4096 of 4096", rep.VerifiedPages, rep.Pages)
	}
	if rep.SourceWrites == 0 || rep.DirtyPages == 0 {
		t.Errorf("the workload wrote %d times and dirtied %d pages: the test did not test dirty tracking", rep.SourceWrites, rep.DirtyPages)
	}
	if rep.PreCopied+rep.DirtyPages != rep.Pages {
		t.Errorf("pre-copied %d + dirty %d != %d pages", rep.PreCopied, rep.DirtyPages, rep.Pages)
	}
	// Each dirty page is fetched from the source after the resume, and no page the store
	// holds; the destination checked that each page was filled once (VerifyHandler).
	if rep.Fetched != rep.DirtyPages || rep.FetchedClean != 0 {
		t.Errorf("fetched %d of the %d dirty pages, and %d clean ones: want every dirty page, no clean one", rep.Fetched, rep.DirtyPages, rep.FetchedClean)
	}
	// The library's push filled the pages the workload's faults (and their fault-around
	// windows) did not.
	if rep.Pushed == 0 || rep.Pushed > rep.Pages {
		t.Errorf("the background push filled %d of %d pages", rep.Pushed, rep.Pages)
	}
	if rep.Touches != 512 {
		t.Errorf("destination touched %d pages, want 512", rep.Touches)
	}
	if rep.Downtime <= 0 || rep.Total <= rep.Downtime {
		t.Errorf("downtime %v, total %v", rep.Downtime, rep.Total)
	}
}

// TestPostCopyUnderGC: the guest reads every page for the first time with copy() (runtime
// assembly, which the collector cannot interrupt while it waits in a fault) while it collects
// garbage in a loop; with Lazy, each of those first reads is a fault that only the pager can
// serve. A fault server in the guest's own runtime would hang here; every run must finish
// (Run's timeout turns a hang into a failure) with every page right.
func TestPostCopyUnderGC(t *testing.T) {
	for i := 0; i < 3; i++ {
		rep, err := Run(Config{ImageSize: 8 << 20, DestGC: true, Lazy: true, NoPush: i%2 == 0, HotFraction: 0.3, Seed: uint64(i + 1), Timeout: 40 * time.Second})
		if err != nil {
			t.Fatalf("run %d: %v", i, err)
		}
		if rep.DestGCCycles == 0 || rep.VerifiedPages != rep.Pages || rep.Touches != rep.Pages {
			t.Fatalf("run %d: %d collections, %d of %d pages verified, %d touched", i, rep.DestGCCycles, rep.VerifiedPages, rep.Pages, rep.Touches)
		}
		// Every page is mapped on a fault (more than one when a preemption signal interrupts
		// the wait and the access faults again).
		if rep.DestFaults < uint64(rep.Pages) {
			t.Fatalf("run %d: %d faults for %d pages read for the first time", i, rep.DestFaults, rep.Pages)
		}
		t.Logf("run %d: %d collections during %d faults", i, rep.DestGCCycles, rep.DestFaults)
	}
}

// TestHandlerCrash: fault handler processes of the destination die (SIGKILL) while its
// workload reads pages that only they can give it. With one killed, the standby takes over and
// every page arrives; with both, the destination ends with the library's message, and no
// process of the migration outlives it: it never runs on with pages it does not have (its
// views stay registered, so no fault becomes a zero page).
func TestHandlerCrash(t *testing.T) {
	rep, err := Run(Config{ImageSize: 8 << 20, Lazy: true, killHandlers: 1, Stderr: io.Discard})
	if err != nil || rep.VerifiedPages != rep.Pages {
		t.Fatalf("migration whose primary handler was killed: %v; verified %d of %d pages", err, rep.VerifiedPages, rep.Pages)
	}
	token := fmt.Sprintf("%d-%d", os.Getpid(), time.Now().UnixNano())
	t.Setenv("MIRRORMEM_POSTCOPY_TEST_TOKEN", token)
	var stderr bytes.Buffer
	_, err = Run(Config{ImageSize: 8 << 20, Lazy: true, killHandlers: 2, Stderr: &stderr})
	if err == nil || !strings.Contains(stderr.String(), "every fault handler process") {
		t.Fatalf("migration whose handlers were killed: %v; error output %q", err, stderr.String())
	}
	t.Log(err)
	noneOutlive(t, token)
}

// TestDestinationDies: the destination ends abruptly after resuming; Run says so, and its
// fault handler processes do not outlive it.
func TestDestinationDies(t *testing.T) {
	token := fmt.Sprintf("%d-%d", os.Getpid(), time.Now().UnixNano())
	t.Setenv("MIRRORMEM_POSTCOPY_TEST_TOKEN", token)
	_, err := Run(Config{ImageSize: 8 << 20, destCrash: true, Stderr: io.Discard})
	if err == nil || !strings.Contains(err.Error(), "without a report") || !strings.Contains(err.Error(), "exit status 3") {
		t.Fatalf("migration whose destination died: %v", err)
	}
	t.Log(err)
	noneOutlive(t, token)
}

// noneOutlive fails t if processes with the token in their environment are still there after
// a few seconds (they end asynchronously, on their parent's death).
func noneOutlive(t *testing.T, token string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		pids := processesWith("MIRRORMEM_POSTCOPY_TEST_TOKEN=" + token)
		if len(pids) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("processes %v of the migration outlived their destination", pids)
		}
		time.Sleep(20 * time.Millisecond) // polling other processes' exits, bounded by the deadline
	}
}

// processesWith lists the processes other than this one whose environment has kv.
func processesWith(kv string) []string {
	var pids []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if e.Name() == strconv.Itoa(os.Getpid()) || e.Name()[0] < '0' || e.Name()[0] > '9' {
			continue
		}
		env, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err != nil {
			continue
		}
		for _, v := range bytes.Split(env, []byte{0}) {
			if string(v) == kv {
				pids = append(pids, e.Name())
			}
		}
	}
	return pids
}

func TestPostCopyOverHTTP(t *testing.T) {
	rep, err := Run(Config{ImageSize: 8 << 20, DemandOverHTTP: true, DestTouches: 256, HotFraction: 0.3})
	if err != nil {
		t.Fatalf("%v\n%v", err, rep)
	}
	t.Log("\n" + rep.String())
	if rep.VerifiedPages != rep.Pages || rep.Demand != "HTTP Range" || rep.DirtyPages == 0 {
		t.Errorf("%+v", rep)
	}
}

// TestOnDemandOnly: with no push, every page written after the pre-copy comes on demand,
// over the socket and over HTTP.
func TestOnDemandOnly(t *testing.T) {
	for _, http := range []bool{false, true} {
		rep, err := Run(Config{ImageSize: 8 << 20, NoPush: true, DemandOverHTTP: http, HotFraction: 0.2})
		if err != nil {
			t.Fatalf("%v\n%v", err, rep)
		}
		t.Log("\n" + rep.String())
		if rep.Pushed != 0 || rep.Fetched != rep.DirtyPages || rep.FetchedClean != 0 || rep.Requests == 0 || rep.VerifiedPages != rep.Pages {
			t.Errorf("over %s: want every dirty page on demand: %+v", rep.Demand, rep)
		}
	}
}

// TestPushRate: the background push reads no faster than Config.PushRate: a migration lasts at
// least as long as the push's reads take at that rate (each read but the last waits for it).
func TestPushRate(t *testing.T) {
	const size, rate = 8 << 20, 8 << 20
	rep, err := Run(Config{ImageSize: size, PushRate: rate, DestTouches: 64})
	if err != nil {
		t.Fatalf("%v\n%v", err, rep)
	}
	t.Log("\n" + rep.String())
	if rep.Pushed == 0 || rep.VerifiedPages != rep.Pages {
		t.Fatalf("%+v", rep)
	}
	lastRead := 1 << 20 // the library's largest read by default
	if least := time.Duration(float64(rep.Pushed*rep.PageSize-lastRead) / rate * float64(time.Second)); rep.Total < least {
		t.Errorf("%d pages pushed in %v at %d bytes/s: the push would take %v at least", rep.Pushed, rep.Total, rate, least)
	}
}

// TestSourceDisappearsOnDemand: the source dies while faults fetch pages from it.
func TestSourceDisappearsOnDemand(t *testing.T) {
	for _, http := range []bool{false, true} {
		_, err := Run(Config{ImageSize: 8 << 20, NoPush: true, DemandOverHTTP: http, FailSourceAfter: 5, HotFraction: 0.2, Stderr: io.Discard})
		if err == nil || !strings.Contains(err.Error(), "source disappeared") || !strings.Contains(err.Error(), "page") {
			t.Fatalf("http=%v: migration from a source that vanished during demand faults: %v", http, err)
		}
		t.Log(err)
	}
}

func TestSourceDisappearsHTTP(t *testing.T) {
	_, err := Run(Config{ImageSize: 8 << 20, DemandOverHTTP: true, FailSourceAfter: 5, HotFraction: 0.2, Stderr: io.Discard})
	if err == nil || !strings.Contains(err.Error(), "source disappeared") {
		t.Fatalf("migration from a vanished HTTP source: %v", err)
	}
}

func TestStopAndCopy(t *testing.T) {
	rep, err := Run(Config{Mode: StopAndCopy, ImageSize: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if rep.VerifiedPages != rep.Pages || rep.DirtyPages != 0 || rep.Fetched+rep.FetchedClean+rep.Requests != 0 || rep.PreCopied != rep.Pages {
		t.Errorf("stop-and-copy: %+v", rep)
	}
	if rep.BytesSent < int64(rep.ImageBytes) {
		t.Errorf("sent %d bytes for a %d-byte image", rep.BytesSent, rep.ImageBytes)
	}
}

// TestSourceDisappears: the source drops its connections after pushing a few pages; the
// destination still needs the others and must fail with a clear error, not finish with zeros.
func TestSourceDisappears(t *testing.T) {
	defer leakcheck.Check(t)()
	rep, err := Run(Config{ImageSize: 8 << 20, FailSourceAfter: 5, HotFraction: 0.2, Stderr: io.Discard})
	if err == nil {
		t.Fatalf("migration from a source that disappeared succeeded: %v", rep)
	}
	if !strings.Contains(err.Error(), "source disappeared") {
		t.Errorf("error does not say what happened: %v", err)
	}
	if rep.VerifiedPages != 0 {
		t.Errorf("the destination verified %d pages after losing its source", rep.VerifiedPages)
	}
	t.Log(err)
}

// TestNotADestination: a program that forgot MaybeDestination gets an error, not a cascade of
// processes that each start another one.
func TestNotADestination(t *testing.T) {
	t.Setenv(envDest, "127.0.0.1:1")
	if _, err := Run(Config{ImageSize: 1 << 20}); err == nil || !strings.Contains(err.Error(), "MaybeDestination") {
		t.Fatalf("Run in a destination process: %v", err)
	}
}

// TestTimeout: a migration that cannot finish in time is ended, with an error saying so.
func TestTimeout(t *testing.T) {
	_, err := Run(Config{ImageSize: 64 << 20, Timeout: time.Millisecond, Stderr: io.Discard})
	if err == nil {
		t.Fatal("a 64 MiB migration finished within 1ms")
	}
	t.Log(err)
}

func TestBadConfig(t *testing.T) {
	defer leakcheck.Check(t)()
	for _, c := range []Config{{ImageSize: -1}, {HotFraction: 2}, {Mode: 7}, {WritesPerSecond: -1}} {
		if _, err := Run(c); err == nil {
			t.Errorf("Run(%+v) succeeded", c)
		}
	}
}
