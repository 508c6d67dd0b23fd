package mirror

// afterViews runs in create once every view exists (s.views, s.contiguous, s.backend are set)
// and before Mirror/Of return: the place to register the views with userfaultfd and start
// serving. src says what the views show (its fd, if any, stays open until create returns). An
// error undoes the whole Pair through teardown, which calls beforeUnmap first.
func (s *state) afterViews(src *source, cfg *config) error { return nil }

// beforeUnmap runs first in Close (once), while every view is still mapped: the place to stop
// serving and unregister the views. It also runs when afterViews failed halfway, so it must
// undo whatever part of afterViews happened.
func (s *state) beforeUnmap() error { return nil }
