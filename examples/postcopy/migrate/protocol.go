package migrate

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// The stream's protocol. The destination opens one TCP connection to the source, the stream,
// which carries the source's pre-copy, resume and push messages. The pages the destination
// fetches on demand come from the source's page server (mirror.ServePages) or its HTTP server.
const (
	msgHello    = 'H' // image size u64, page size u32, mode u32
	msgPage     = 'P' // page index u32, crc32c u32, the page
	msgResume   = 'R' // count u32, count page indices u32: pages the pre-copy must not supply
	msgManifest = 'M' // one crc32c u32 per page of the source's final image
	msgEnd      = 'E' // nothing more on the stream
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func pageCRC(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

func putU32(w io.Writer, vs ...uint32) error {
	var b [4]byte
	for _, v := range vs {
		binary.LittleEndian.PutUint32(b[:], v)
		if _, err := w.Write(b[:]); err != nil {
			return err
		}
	}
	return nil
}

func getU32(r io.Reader) (uint32, error) {
	var b [4]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(b[:]), nil
}

// errSourceGone wraps what the destination sees when the source stops answering.
var errSourceGone = errors.New("the source disappeared mid-migration")

func sourceGone(what string, err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		err = fmt.Errorf("connection closed: %w", err)
	}
	return fmt.Errorf("%w (%s: %v)", errSourceGone, what, err)
}
