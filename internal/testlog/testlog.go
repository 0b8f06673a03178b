// Package testlog holds what tests read while something else still writes it: a job log, a
// stage's output, a service's log.
package testlog

import (
	"bytes"
	"sync"
)

// Buffer is a bytes.Buffer that may be written and read from different goroutines.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns what has been written so far.
func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
