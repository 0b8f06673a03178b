package agent

import (
	"fmt"
	"io"
	"sync"
)

// MaxLog bounds what the agent writes to its log, a file on the host (under the state dir, often
// on /run, that is in memory): anything that can reach the agent's socket — the job itself — can
// make it log, and must not be able to fill the host's memory or disk with it.
const MaxLog = 1 << 20

// maxStage bounds the stage name a run request may carry; gitlab-runner's are a few dozen bytes.
const maxStage = 128

// CappedLog writes to w until max bytes have been written, then one line saying so, then nothing.
func CappedLog(w io.Writer, max int64) io.Writer {
	return &cappedLog{w: w, left: max}
}

type cappedLog struct {
	mu   sync.Mutex
	w    io.Writer
	left int64
	done bool
}

func (c *cappedLog) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.done:
	case int64(len(p)) <= c.left:
		c.left -= int64(len(p))
		if _, err := c.w.Write(p); err != nil {
			return 0, err
		}
	default:
		c.done = true
		fmt.Fprintf(c.w, "agent log truncated: it reached its limit of %d bytes\n", MaxLog)
	}
	// What is dropped is reported as written: the logger must not fail on it.
	return len(p), nil
}
