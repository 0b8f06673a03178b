package sshtarget

import (
	"net"
	"net/http"
	"strconv"
	"sync"
)

// Served is a directory served over HTTP to every target of a fleet, on each one's host address:
// the only server a target can reach. It keeps the paths it was asked for.
type Served struct {
	mu       sync.Mutex
	requests []string
	servers  []*http.Server
}

// ServeDir serves dir on port of every target's HostAddr (a binary cache the targets pull from).
func (f *Fleet) ServeDir(dir string, port int) (*Served, error) {
	s := &Served{}
	files := http.FileServer(http.Dir(dir))
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.requests = append(s.requests, r.URL.Path)
		s.mu.Unlock()
		files.ServeHTTP(w, r)
	})
	for _, t := range f.targets {
		l, err := net.Listen("tcp", net.JoinHostPort(t.HostAddr, strconv.Itoa(port)))
		if err != nil {
			s.Close()
			return nil, err
		}
		srv := &http.Server{Handler: handler}
		s.servers = append(s.servers, srv)
		go srv.Serve(l)
	}
	return s, nil
}

// Requests are the paths asked for so far.
func (s *Served) Requests() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string{}, s.requests...)
}

// Close stops the servers.
func (s *Served) Close() {
	for _, srv := range s.servers {
		srv.Close()
	}
}
