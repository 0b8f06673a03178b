// Package bytesize prints sizes and rates as people read sizes of store paths: in binary units.
package bytesize

import (
	"fmt"
	"time"
)

// Format prints n in binary units.
func Format(n int64) string {
	const unit = 1024
	if n < 0 {
		return "-" + Format(-n)
	}
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
	return Format(int64(float64(n)/d.Seconds())) + "/s"
}
