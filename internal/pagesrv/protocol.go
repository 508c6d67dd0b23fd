// Package pagesrv serves the pages of an image over TCP and reads them back: a page server
// (Serve) and a client (Client, an io.ReaderAt) for this module's fault handler processes.
// mirror exposes them as ServePages and TCPSource, so that memory can be filled lazily from
// another host or process, page by page, as a post-copy migration does.
//
// A fault handler turns an error from ReadAt into a poisoned page, and a wrong byte into silent
// corruption, so a Client never returns bytes it has not received in full: every answer is
// whole pages, exactly those asked for, or an error. The image is pinned when the client first
// connects, by its size, its page size and a token the server draws at random when it starts
// serving: a client that reconnects to another server, or to the same address after the server
// restarted (with another image, or the same one changed), fails with ErrChanged instead of
// reading another version. A Client made from Client.Config in another process pins the same.
//
// Each read is one request per run of at most Greeting.MaxPages pages, on one connection of a
// small pool, retried after transient failures (connection refused, reset or closed, timeouts)
// on a new connection with a short bounded backoff; every attempt has its own timeout. An
// error the server reports (its source failed) is not retried. The package logs nothing.
//
// # Wire protocol, version 1
//
// Integers are little-endian. A connection starts with the client's hello and the server's
// greeting, then carries requests and their answers, one at a time:
//
//	hello     client: "MMPG" version u16 "\r\n"                                        8 bytes
//	greeting  server: "MMPG" version u16 flags u16 page u32 max u32 size u64 token u64  32 bytes
//	request   client: first u32 count u32 (pages [first, first+count), 1 <= count <= max)
//	answer    server: status u8, then (status 0) count*page bytes,
//	                  or (status 1) length u16 and a UTF-8 message of that length
//
// The hello ends with CR LF so that a line-oriented server (HTTP, SMTP) answers it at once,
// and the client can say that it is not a page server. page is the server's page size (a power of two), max the most pages one request may ask for,
// size the image's length in bytes and token a nonzero number identifying this image as served
// by this server. The last page of an image whose size is not a whole number of pages is
// padded with zeros. A server that does not speak the client's version answers with a greeting
// carrying its own and closes the connection; one that receives a malformed hello closes it
// without a word. A request outside the image, or for more than max pages, is answered with
// status 1, and the server closes the connection; a source that fails is answered with
// status 1 too, and the connection stays usable.
package pagesrv

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Version is the protocol version this package speaks.
const Version = 1

// magic opens the hello and the greeting.
const magic = "MMPG"

// Sizes of the fixed-length messages.
const (
	helloLen    = 8
	greetingLen = 32
	requestLen  = 8
)

// Answer statuses.
const (
	statusOK    = 0
	statusError = 1
)

// maxAnswerBytes bounds the pages one answer carries: the server advertises
// max(1, maxAnswerBytes/page) as its Greeting.MaxPages.
const maxAnswerBytes = 4 << 20

// maxMessage bounds an error message in an answer.
const maxMessage = 1024

// Greeting is what a server says about the image when a client connects.
type Greeting struct {
	Version  uint16 // the protocol version the server speaks
	PageSize uint32 // bytes per page, a power of two
	MaxPages uint32 // most pages per request
	Size     uint64 // bytes of the image
	Token    uint64 // nonzero; drawn at random by each Serve
}

// Pages returns the number of pages of the image, the last one possibly partial.
func (g Greeting) Pages() uint64 {
	return (g.Size + uint64(g.PageSize) - 1) / uint64(g.PageSize)
}

func appendHello(b []byte) []byte {
	b = append(b, magic...)
	b = binary.LittleEndian.AppendUint16(b, Version)
	return append(b, "\r\n"...)
}

// parseHello returns the client's version.
func parseHello(b []byte) (uint16, error) {
	if len(b) != helloLen || string(b[:4]) != magic || string(b[6:]) != "\r\n" {
		return 0, errors.New("not a page client's hello")
	}
	return binary.LittleEndian.Uint16(b[4:]), nil
}

func (g Greeting) append(b []byte) []byte {
	b = append(b, magic...)
	b = binary.LittleEndian.AppendUint16(b, g.Version)
	b = binary.LittleEndian.AppendUint16(b, 0)
	b = binary.LittleEndian.AppendUint32(b, g.PageSize)
	b = binary.LittleEndian.AppendUint32(b, g.MaxPages)
	b = binary.LittleEndian.AppendUint64(b, g.Size)
	return binary.LittleEndian.AppendUint64(b, g.Token)
}

// errNotPageServer is wrapped by parseGreeting's error for bytes that are no greeting at all.
var errNotPageServer = errors.New("the peer is not a page server")

// parseGreeting decodes and checks a greeting.
func parseGreeting(b []byte) (Greeting, error) {
	if len(b) != greetingLen || string(b[:4]) != magic {
		return Greeting{}, fmt.Errorf("%w: it answered %q", errNotPageServer, printable(b[:min(len(b), 12)]))
	}
	g := Greeting{
		Version:  binary.LittleEndian.Uint16(b[4:]),
		PageSize: binary.LittleEndian.Uint32(b[8:]),
		MaxPages: binary.LittleEndian.Uint32(b[12:]),
		Size:     binary.LittleEndian.Uint64(b[16:]),
		Token:    binary.LittleEndian.Uint64(b[24:]),
	}
	if g.Version != Version {
		return g, fmt.Errorf("the server speaks protocol version %d, this client %d: use the same mirrormem release on both sides", g.Version, Version)
	}
	switch {
	case !validPageSize(int64(g.PageSize)):
		return g, fmt.Errorf("the server's greeting has a page size of %d bytes (want a power of two, 512 to 1 MiB)", g.PageSize)
	case g.MaxPages == 0:
		return g, errors.New("the server's greeting allows 0 pages per request")
	case g.Token == 0:
		return g, errors.New("the server's greeting has a zero token")
	case g.Size > maxSize || g.Pages() > maxPagesIndex:
		return g, fmt.Errorf("the server's greeting announces an image of %d bytes: more than this protocol can address", g.Size)
	}
	return g, nil
}

// maxSize bounds an image's size so that offsets fit an int64.
const maxSize = 1<<63 - 1

// maxPagesIndex is the most pages an image may have: page numbers are u32.
const maxPagesIndex = 1 << 32

func validPageSize(p int64) bool { return p >= 512 && p <= 1<<20 && p&(p-1) == 0 }

// printable renders bytes from the peer for an error message.
func printable(b []byte) string {
	out := make([]byte, len(b))
	for i, c := range b {
		if c < ' ' || c > '~' {
			c = '.'
		}
		out[i] = c
	}
	return string(out)
}
