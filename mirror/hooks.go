package mirror

// afterViews runs in create once every view exists and before Mirror/Of return: the place to
// register the views with userfaultfd and start serving. An error undoes the whole Pair.
func (s *state) afterViews(cfg *config) error { return nil }

// beforeUnmap runs first in Close, while every view is still mapped: the place to stop
// serving and unregister the views.
func (s *state) beforeUnmap() error { return nil }
