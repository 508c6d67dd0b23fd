package mirror

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/mirrormem/mirrormem/alloc"
)

// The handler process copies file pages straight from a read-only mapping of the source (one
// copy per page, by the kernel), as the native handler does, not through a pread buffer.
func TestHandlerProcessMapsFileSource(t *testing.T) {
	n := 64 * alloc.PageSize()
	f, data := patternFile(t, n)
	defer unchanged(t)()
	r := shared(t, n)
	p, closePair := mirrored(t, r, ServeFaults(f), WithHandler(HandlerProcess))
	defer closePair()
	got := make([]byte, n)
	copy(got, p.Mirror())
	if !bytes.Equal(got, data) {
		t.Fatal("the mirror does not show the file")
	}
	pids := p.FaultHandlerPids()
	if len(pids) == 0 {
		t.Fatal("no handler process")
	}
	maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pids[0]))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(maps), "\n") {
		if strings.HasSuffix(l, " "+f.Name()) && strings.Contains(l, " r--s ") {
			return
		}
	}
	t.Fatalf("the handler process has no read-only shared mapping of the source %s:\n%s", f.Name(), maps)
}
