package cache

import (
	"fmt"
	"strings"
	"time"
)

// FormatBytes prints n in binary units, as people read sizes of store paths.
func FormatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// Rate prints bytes per second over d.
func Rate(n int64, d time.Duration) string {
	if d <= 0 {
		return "-"
	}
	return FormatBytes(int64(float64(n)/d.Seconds())) + "/s"
}

// String is the one-line account of a push.
func (s Summary) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "pushed %d %s", s.Pushed, plural(s.Pushed, "path", "paths"))
	if s.Pushed > 0 {
		fmt.Fprintf(&b, " (%s NAR", FormatBytes(s.NarBytes))
		if s.FileBytes > 0 {
			fmt.Fprintf(&b, ", %s compressed", FormatBytes(s.FileBytes))
		}
		fmt.Fprintf(&b, ", %s)", Rate(s.NarBytes, s.Elapsed))
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
