package pagesrv

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/mirrormem/mirrormem/internal/netsrc"
)

// Defaults for the zero values of Config's tuning fields (the same for both network sources),
// and the largest values accepted.
const (
	DefaultTimeout  = netsrc.DefaultTimeout
	DefaultRetries  = netsrc.DefaultRetries
	DefaultMaxConns = netsrc.DefaultMaxConns

	MaxRetries  = 100
	MaxMaxConns = 1024
)

// Config describes a page server to read from. It is JSON-encodable (Marshal, Unmarshal) so
// that a process can hand it to a re-executed handler process as bytes.
//
// Zero values of Timeout, Retries and MaxConns select the defaults. Size, PageSize and Token
// pin the image: if Token is set, Dial fails with ErrChanged unless the server greets with the
// same three. Client.Config returns a Config with all three filled in from the greeting.
type Config struct {
	// Addr is the server's host:port, as net.Dial("tcp", Addr) takes it.
	Addr string `json:"addr"`
	// Timeout bounds each attempt: waiting for a free connection, dialling and the greeting,
	// the request and the last byte of its answer. Default 30s.
	Timeout time.Duration `json:"timeout,omitempty"`
	// Retries is the number of extra attempts after a transient failure. Default 3.
	Retries int `json:"retries,omitempty"`
	// MaxConns is the most connections, busy or idle, kept to the server. Default 8.
	MaxConns int `json:"max_conns,omitempty"`
	// Size, PageSize and Token pin the image (see above).
	Size     int64  `json:"size,omitempty"`
	PageSize int64  `json:"page_size,omitempty"`
	Token    uint64 `json:"token,omitempty"`
}

// Marshal validates c and encodes it as JSON.
func (c Config) Marshal() ([]byte, error) { return netsrc.Marshal(c) }

// Unmarshal decodes a Config encoded by Marshal, as strictly as netsrc.DecodeStrict (no
// unknown field, nothing after the object), and validates it.
func Unmarshal(b []byte) (Config, error) {
	var c Config
	if err := netsrc.DecodeStrict(b, &c); err != nil {
		return Config{}, fmt.Errorf("pagesrv: config: %w", err)
	}
	return c, c.Validate()
}

// Validate reports the first problem of c, or nil.
func (c Config) Validate() error {
	if err := checkAddr(c.Addr); err != nil {
		return err
	}
	switch {
	case c.Timeout < 0:
		return fmt.Errorf("pagesrv: config: timeout %v is negative", c.Timeout)
	case c.Retries < 0 || c.Retries > MaxRetries:
		return fmt.Errorf("pagesrv: config: %d retries: want 0 (default %d) to %d", c.Retries, DefaultRetries, MaxRetries)
	case c.MaxConns < 0 || c.MaxConns > MaxMaxConns:
		return fmt.Errorf("pagesrv: config: %d connections: want 0 (default %d) to %d", c.MaxConns, DefaultMaxConns, MaxMaxConns)
	case c.Token == 0 && (c.Size != 0 || c.PageSize != 0):
		return errors.New("pagesrv: config: size and page_size pin an image only with its token")
	case c.Token != 0 && (c.Size < 0 || !validPageSize(c.PageSize)):
		return fmt.Errorf("pagesrv: config: pinned image of %d bytes in pages of %d: not a valid image", c.Size, c.PageSize)
	}
	return nil
}

// checkAddr checks that addr is a host:port net.Dial can take.
func checkAddr(addr string) error {
	if addr == "" {
		return errors.New("pagesrv: config: empty address: want host:port")
	}
	if strings.Contains(addr, "://") {
		return fmt.Errorf("pagesrv: config: address %q is a URL: want host:port", netsrc.Clip(addr))
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		var ae *net.AddrError
		if errors.As(err, &ae) {
			err = errors.New(ae.Err)
		}
		return fmt.Errorf("pagesrv: config: address %q: %v: want host:port", netsrc.Clip(addr), err)
	}
	if port == "" {
		return fmt.Errorf("pagesrv: config: address %q has no port", netsrc.Clip(addr))
	}
	if n, err := strconv.Atoi(port); err == nil && (n < 1 || n > 65535) {
		return fmt.Errorf("pagesrv: config: address %q: port %d is not in 1-65535", netsrc.Clip(addr), n)
	}
	return nil
}

// tuning returns c's tuning with the defaults in place of zero values.
func (c Config) tuning() netsrc.Tuning {
	return netsrc.Tuning{Timeout: c.Timeout, Retries: c.Retries, MaxConns: c.MaxConns}.WithDefaults()
}
