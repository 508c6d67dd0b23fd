package alloc

import (
	"bytes"
	"fmt"
	"os"
)

const shmemEnabled = "/sys/kernel/mm/transparent_hugepage/shmem_enabled"

// hugePagesAllowed reads the administrator's shmem huge page policy: "always", "within_size",
// "advise" and "force" let MADV_HUGEPAGE take effect; "never" and "deny" do not.
func hugePagesAllowed() error {
	data, err := os.ReadFile(shmemEnabled)
	if err != nil {
		return fmt.Errorf("%w: transparent huge pages for shmem need a kernel with CONFIG_TRANSPARENT_HUGEPAGE (4.8+ for shmem): %w", ErrUnsupported, err)
	}
	setting := selected(data)
	switch setting {
	case "always", "within_size", "advise", "force":
		return nil
	}
	return fmt.Errorf("%w: transparent huge pages for shmem are disabled (%s is %q); an administrator can enable them with: echo advise > %s",
		ErrUnsupported, shmemEnabled, setting, shmemEnabled)
}

// selected returns the bracketed word of a sysfs choice list such as "always [never] deny".
func selected(data []byte) string {
	i := bytes.IndexByte(data, '[')
	j := bytes.IndexByte(data, ']')
	if i < 0 || j < i {
		return string(bytes.TrimSpace(data))
	}
	return string(data[i+1 : j])
}
