package cache

import (
	"fmt"
	"strings"

	"github.com/hearth-ci/hearth/bytesize"
)

// String is the one-line account of a push.
func (s Summary) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "pushed %d %s", s.Pushed, plural(s.Pushed, "path", "paths"))
	if s.Pushed > 0 {
		fmt.Fprintf(&b, " (%s NAR", bytesize.Format(s.NarBytes))
		if s.FileBytes > 0 {
			fmt.Fprintf(&b, ", %s compressed", bytesize.Format(s.FileBytes))
		}
		fmt.Fprintf(&b, ", %s)", bytesize.Rate(s.NarBytes, s.Elapsed))
	}
	fmt.Fprintf(&b, "; %d already in the cache", s.Present)
	if s.Gone > 0 {
		fmt.Fprintf(&b, "; %d no longer in the store", s.Gone)
	}
	fmt.Fprintf(&b, "; %.1f s", s.Elapsed.Seconds())
	return b.String()
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
