package main

import "time"

// Library rows of the creation suite: one function per backend.

func libraryCreateRows(n int, target time.Duration) []row {
	return []row{
		{name: rowMirrorDup, skip: func() string { return "mirror.Mirror is not in the library yet" }},
		{name: rowMirrorMemfd, skip: func() string { return "mirror.Mirror is not in the library yet" }},
	}
}
