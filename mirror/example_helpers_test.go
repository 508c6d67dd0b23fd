package mirror_test

import (
	"bytes"
	"os"
)

// snapshotFile stands in, in the examples, for a snapshot on disk: a temporary file of n bytes
// that reads "snapshot" over and over. remove closes and removes it.
func snapshotFile(n int) (f *os.File, remove func(), err error) {
	f, err = os.CreateTemp("", "snapshot")
	if err != nil {
		return nil, nil, err
	}
	remove = func() {
		f.Close()
		os.Remove(f.Name())
	}
	if _, err := f.Write(bytes.Repeat([]byte("snapshot"), n/8)); err != nil {
		remove()
		return nil, nil, err
	}
	return f, remove, nil
}
