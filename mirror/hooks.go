package mirror

// afterViews runs in create once every view exists and before Mirror/Of return: with
// ServeFaults it registers every view with userfaultfd and starts the handler. An error undoes
// the whole Pair.
func (s *state) afterViews(src *source, cfg *config) error {
	if !cfg.faults.serve {
		return nil
	}
	return s.startServing(cfg, src)
}

// beforeUnmap runs first in Close, while every view is still mapped: it stops the handler and
// closes the userfaultfd, which unregisters the views. The caller's own mapping (r.Bytes(), or
// Of's b) outlives the pair unless CloseRegion closes the region with it.
func (s *state) beforeUnmap() error {
	sv := s.faults
	if sv == nil {
		return nil
	}
	keep := -1
	if !s.owns {
		keep = 0
		if sv.hidden >= 0 {
			keep = sv.hidden
		}
	}
	return sv.stop(keep, true)
}
