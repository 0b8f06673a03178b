package cache

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/hearth-ci/hearth/nixstore"
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

// Flusher pushes what the queue holds and accounts for it in a job log.
type Flusher struct {
	Queue  Queue
	Pusher *Pusher
}

// Flush drains the queue and writes a collapsible job-log section: each path pushed, then totals.
// The error is for paths that could not be pushed (they stay queued) or a queue that could not be
// read; corrupt entries are reported in the section and left for a person.
func (f *Flusher) Flush(ctx context.Context, log io.Writer) error {
	start := time.Now()
	fmt.Fprintf(log, "section_start:%d:hearth_cache_push[collapsed=true]\r\x1b[0K\x1b[32;1mPushing what the job built to %s\x1b[0;m\n", start.Unix(), f.Pusher.Backend)
	defer func() { fmt.Fprintf(log, "section_end:%d:hearth_cache_push\r\x1b[0K\n", time.Now().Unix()) }()
	var mu sync.Mutex
	p := *f.Pusher
	p.Pushed = func(info nixstore.PathInfo, st Stats) {
		mu.Lock()
		defer mu.Unlock()
		line := "pushed " + info.Path + " (" + FormatBytes(st.NarBytes)
		if st.FileBytes > 0 {
			line += ", " + FormatBytes(st.FileBytes) + " compressed"
		}
		fmt.Fprintln(log, line+")")
	}
	res, err := Drain(ctx, f.Queue, &p, true)
	for _, c := range res.Corrupt {
		fmt.Fprintf(log, "\x1b[0;33mWARNING: %v\x1b[0;m\n", c)
	}
	if res.Entries == 0 && err == nil {
		fmt.Fprintln(log, "nothing was waiting to be pushed")
		return nil
	}
	line := res.Summary.String()
	fmt.Fprintln(log, strings.ToUpper(line[:1])+line[1:])
	return err
}

// DrainResult is what one drain did.
type DrainResult struct {
	Summary
	// Entries is how many queue entries were taken.
	Entries int
	// Corrupt lists entries that could not be read; they stay queued.
	Corrupt []error
}
