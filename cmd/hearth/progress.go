package main

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/hearth-ci/hearth/bytesize"
	"github.com/hearth-ci/hearth/cache"
)

// progress shows a push as it goes: one line rewritten in place on a terminal, a plain line every
// few seconds in a log.
type progress struct {
	w     io.Writer
	tty   bool
	mu    sync.Mutex
	last  time.Time
	shown bool
}

func newProgress(w *os.File) *progress {
	fi, err := w.Stat()
	return &progress{w: w, tty: err == nil && fi.Mode()&os.ModeCharDevice != 0}
}

func (p *progress) update(pr cache.Progress) {
	p.mu.Lock()
	defer p.mu.Unlock()
	line := fmt.Sprintf("%d/%d paths, %s, %s", pr.Done, pr.Total, bytesize.Format(pr.NarBytes), bytesize.Rate(pr.NarBytes, pr.Elapsed))
	switch {
	case p.tty:
		fmt.Fprintf(p.w, "\r\x1b[K%s", line)
		p.shown = true
	case pr.Done == pr.Total || time.Since(p.last) >= 5*time.Second:
		fmt.Fprintln(p.w, line)
		p.last = time.Now()
	}
}

func (p *progress) finish() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.shown {
		fmt.Fprintln(p.w)
	}
}
