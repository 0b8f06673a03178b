package driver

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/hearth-ci/hearth/bytesize"
	"github.com/hearth-ci/hearth/cache"
	"github.com/hearth-ci/hearth/nixstore"
)

// GitLab's job-log markup: collapsible sections and ANSI colours. Everything else in hearth
// reports plain facts; how they look in a job log is decided here.

// section opens a collapsible section named name with header as its title, and returns what
// closes it.
func section(log io.Writer, name, header string) (end func()) {
	fmt.Fprintf(log, "section_start:%d:%s[collapsed=true]\r\x1b[0K\x1b[32;1m%s\x1b[0;m\n", time.Now().Unix(), name, header)
	return func() { fmt.Fprintf(log, "section_end:%d:%s\r\x1b[0K\n", time.Now().Unix(), name) }
}

// warning writes a line the job log shows in yellow.
func warning(log io.Writer, format string, args ...any) {
	fmt.Fprintf(log, "\x1b[0;33mWARNING: "+format+"\x1b[0;m\n", args...)
}

// flush pushes what the job built, in a collapsible section: each path as it is pushed, then the
// totals; corrupt queue entries are warnings there. The error is the push's.
func flush(ctx context.Context, log io.Writer, f Flusher) error {
	defer section(log, "hearth_cache_push", "Pushing what the job built to "+f.String())()
	res, err := f.Flush(ctx, func(info nixstore.PathInfo, st cache.Stats) {
		line := "pushed " + info.Path + " (" + bytesize.Format(st.NarBytes)
		if st.FileBytes > 0 {
			line += ", " + bytesize.Format(st.FileBytes) + " compressed"
		}
		fmt.Fprintln(log, line+")")
	})
	for _, c := range res.Corrupt {
		warning(log, "%v", c)
	}
	for _, r := range res.Rejected {
		warning(log, "%v", r)
	}
	if res.Entries == 0 && err == nil {
		fmt.Fprintln(log, "nothing was waiting to be pushed")
		return nil
	}
	line := res.Summary.String()
	fmt.Fprintln(log, strings.ToUpper(line[:1])+line[1:])
	return err
}
