package mirror

import (
	"fmt"
	"io"
	"runtime"
	"strings"
	"sync"

	"github.com/mirrormem/mirrormem/internal/fault"
)

// RegisterSource registers a constructor of fault sources written in Go under name: an HTTP
// client, a TCP page server's client, a decompressor, a cache in front of them. Give
// NamedSource(name, config) to ServeFaults, and the pair's faults are served by a handler
// process (this program re-executed, as moby's reexec does) that calls open(config) and serves
// what it returns: the garbage collector of the program can never wait on its own fault
// handler, so the views may be touched any way (copy, bytes.Equal, fmt...), in cgo and
// CGO_ENABLED=0 builds alike.
//
// Call it from an init function, unconditionally: the handler process never runs main, so it
// knows only the constructors registered while the program initialises (and, in it, the call
// that registers the wanted name does not return: it builds the source and serves). A name
// registered later is refused by Mirror and Of with an error saying so. Registering a name
// twice panics, as does an empty name or a nil constructor. open runs in the handler process,
// once per handler process (the primary, and the standby that takes over if it dies); its
// error comes back from Mirror or Of.
func RegisterSource(name string, open func(config []byte) (io.ReaderAt, error)) {
	if name == "" || open == nil {
		panic("mirror.RegisterSource: empty name or nil constructor")
	}
	sources.mu.Lock()
	if _, dup := sources.m[name]; dup {
		sources.mu.Unlock()
		panic(fmt.Sprintf("mirror.RegisterSource(%q): registered twice", name))
	}
	sources.m[name] = registration{open: open, inInit: calledFromInit()}
	sources.mu.Unlock()
	fault.ServeRegistered(name, open) // in the handler process waiting for name: never returns
}

// NamedSource is the source to give ServeFaults for a constructor registered with
// RegisterSource: name selects it, config is passed to it in the handler process (JSON, a
// URL, anything it understands; at most 64 KiB). ServeFaults checks the name when the pair
// is made. Its ReadAt builds the source in this process on first use (Verify reads through it);
// Close releases that, if it is an io.Closer.
func NamedSource(name string, config []byte) io.ReaderAt {
	return &namedSource{name: name, config: append([]byte(nil), config...)}
}

// namedSource is what NamedSource returns.
type namedSource struct {
	name   string
	config []byte

	// prepare, if set, makes config when a pair is made (HTTPSource pins the object's
	// version there), once.
	prepare  func() error
	prepared sync.Once
	prepErr  error
	built    io.ReaderAt // what prepare built already, if anything

	once sync.Once
	src  io.ReaderAt
	err  error
}

// ReadAt reads through the source built in this process (Verify compares pages with it).
func (n *namedSource) ReadAt(p []byte, off int64) (int, error) {
	n.once.Do(func() {
		r, err := n.registration()
		switch {
		case err != nil:
			n.err = err
		case n.built != nil:
			n.src = n.built
		default:
			n.src, n.err = r.open(n.config)
		}
	})
	if n.err != nil {
		return 0, n.err
	}
	return n.src.ReadAt(p, off)
}

// Close closes what was built in this process (by ReadAt, or by prepare when the pair was
// made), if it can be closed.
func (n *namedSource) Close() error {
	src := n.src
	if src == nil {
		src = n.built // prepare built it (an HTTP probe's connection), ReadAt never ran
	}
	if c, ok := src.(io.Closer); ok {
		return c.Close()
	}
	return nil
}

// registration returns what RegisterSource recorded for the name, or why it cannot be used,
// after preparing the configuration.
func (n *namedSource) registration() (registration, error) {
	if n.prepare != nil {
		n.prepared.Do(func() { n.prepErr = n.prepare() })
		if n.prepErr != nil {
			return registration{}, n.prepErr
		}
	}
	sources.mu.Lock()
	r, ok := sources.m[n.name]
	sources.mu.Unlock()
	switch {
	case !ok:
		return r, fmt.Errorf("%w: NamedSource(%q): no source is registered under that name (call RegisterSource from an init function)", ErrOption, n.name)
	case !r.inInit:
		return r, fmt.Errorf("%w: NamedSource(%q): RegisterSource was called after init: call it from an init function (the handler process never runs main)", ErrOption, n.name)
	case len(n.config) > maxSourceConfig:
		return r, fmt.Errorf("%w: NamedSource(%q): a configuration of %d bytes; at most %d", ErrOption, n.name, len(n.config), maxSourceConfig)
	}
	return r, nil
}

// maxSourceConfig bounds a named source's configuration, which the handler process receives
// with the rest of its configuration.
const maxSourceConfig = 64 << 10

type registration struct {
	open   func(config []byte) (io.ReaderAt, error)
	inInit bool
}

var sources = struct {
	mu sync.Mutex
	m  map[string]registration
}{m: map[string]registration{}}

// calledFromInit reports whether the caller runs inside package initialisation.
func calledFromInit() bool {
	pc := make([]uintptr, 64)
	frames := runtime.CallersFrames(pc[:runtime.Callers(2, pc)])
	for {
		f, more := frames.Next()
		if strings.HasPrefix(f.Function, "runtime.doInit") {
			return true
		}
		if f.Function == "main.main" || !more {
			return false
		}
	}
}
