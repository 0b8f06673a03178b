// Package bytesize prints sizes and rates as people read sizes of store paths: in binary units.
package bytesize

import (
	"fmt"
	"strconv"
	"strings"
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

// Parse reads a size as people write a limit: a number of bytes, or a number with a binary unit,
// K, M, G or T, alone or as KiB, MiB, GiB, TiB ("512M", "4GiB", "1.5G"), as systemd's MemoryMax=
// and docker's --memory read them. Decimal units (GB) are refused rather than guessed at.
func Parse(s string) (int64, error) {
	t := strings.TrimSpace(s)
	num := strings.TrimRightFunc(t, func(r rune) bool { return r < '0' || r > '9' })
	// Allow a fraction: "1.5G".
	if i := strings.LastIndexFunc(t[:len(num)], func(r rune) bool { return r != '.' && (r < '0' || r > '9') }); i >= 0 {
		return 0, fmt.Errorf("%q is not a size such as \"512MiB\" or \"4GiB\"", s)
	}
	unit := strings.TrimSpace(t[len(num):])
	shift := map[string]uint{"": 0, "B": 0, "K": 10, "KiB": 10, "M": 20, "MiB": 20, "G": 30, "GiB": 30, "T": 40, "TiB": 40}
	sh, ok := shift[unit]
	if !ok {
		if strings.HasSuffix(unit, "B") && len(unit) == 2 {
			return 0, fmt.Errorf("%q: write binary units, %siB or %s (a %s would be ambiguous)", s, unit[:1], unit[:1], unit)
		}
		return 0, fmt.Errorf("%q is not a size such as \"512MiB\" or \"4GiB\"", s)
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || f < 0 {
		return 0, fmt.Errorf("%q is not a size such as \"512MiB\" or \"4GiB\"", s)
	}
	n := f * float64(int64(1)<<sh)
	if n >= 1<<62 {
		return 0, fmt.Errorf("%q is too large", s)
	}
	return int64(n), nil
}
