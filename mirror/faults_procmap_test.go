package mirror

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/mirrormem/mirrormem/alloc"
)

// The handler process copies the pages of a file that cannot shrink (a memfd sealed with
// F_SEAL_SHRINK) straight from a read-only mapping of it (one copy per page, by the kernel), as
// the native handler does; any other file it reads with pread, never through a mapping (a
// truncation racing a fill would leave zeros in memory; see TestMapSourceOnlySealedFiles).
func TestHandlerProcessMapsFileSource(t *testing.T) {
	n := 64 * alloc.PageSize()
	f, data := patternFile(t, n)
	sealed := sealedPatternMemfd(t, n)
	for _, c := range []struct {
		src    *os.File
		name   string // in /proc/PID/maps
		mapped bool
	}{
		{f, f.Name(), false},
		{sealed, "/memfd:sealed-source (deleted)", true},
	} {
		func() {
			defer unchanged(t)()
			r := shared(t, n)
			p, closePair := mirrored(t, r, ServeFaults(c.src), WithHandler(HandlerProcess))
			defer closePair()
			got := make([]byte, n)
			copy(got, p.Mirror())
			if !bytes.Equal(got, data) {
				t.Fatalf("the mirror does not show %s", c.name)
			}
			pids := p.FaultHandlerPids()
			if len(pids) == 0 {
				t.Fatal("no handler process")
			}
			maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pids[0]))
			if err != nil {
				t.Fatal(err)
			}
			mapped := false
			for _, l := range strings.Split(string(maps), "\n") {
				if strings.HasSuffix(l, " "+c.name) && strings.Contains(l, " r--s ") {
					mapped = true
				}
			}
			if mapped != c.mapped {
				t.Errorf("the handler process maps %s: %v, want %v:\n%s", c.name, mapped, c.mapped, maps)
			}
		}()
	}
}
