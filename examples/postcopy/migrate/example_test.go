package migrate_test

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/mirrormem/mirrormem/examples/postcopy/migrate"
)

// Run migrates a 64 MiB image post-copy to a second process. The program must call
// migrate.MaybeDestination first thing in main: the destination is the program run again.
func ExampleRun() {
	rep, err := migrate.Run(migrate.Config{ImageSize: 64 << 20})
	if err != nil {
		fmt.Println("migration failed:", err)
		return
	}
	fmt.Println(rep)
}

// Pages can come from any HTTP server that serves byte ranges.
func ExampleHTTPSource() {
	image := bytes.Repeat([]byte("page"), 2*4096/4)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "image", time.Time{}, bytes.NewReader(image))
	}))
	defer srv.Close()
	src := migrate.HTTPSource(srv.URL, nil)
	defer src.Close()
	page := make([]byte, 4096)
	if err := src.ReadPages(page, 4096); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("%s...\n", page[:8])
	// Output: pagepage...
}
