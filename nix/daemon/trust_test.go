package daemon

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
)

// script is a daemon's side of a connection: what it sends, whatever the client writes.
type script struct {
	bytes.Buffer // what the daemon sends
	sent         bytes.Buffer
}

func (s *script) Write(p []byte) (int, error) { return s.sent.Write(p) }

func (s *script) u64(vs ...uint64) *script {
	for _, v := range vs {
		binary.Write(&s.Buffer, binary.LittleEndian, v)
	}
	return s
}

func (s *script) str(ss ...string) *script {
	for _, v := range ss {
		s.u64(uint64(len(v)))
		b := make([]byte, (len(v)+7)&^7)
		copy(b, v)
		s.Buffer.Write(b)
	}
	return s
}

// hello is a daemon's handshake at protocol 1.minor, with its version and trust flag where that
// protocol has them.
func hello(minor uint64, trust uint64) *script {
	s := (&script{}).u64(workerMagic2, 1<<8|minor)
	if minor >= 33 {
		s.str("2.99.0")
	}
	if minor >= 35 {
		s.u64(trust)
	}
	return s.u64(stderrLast)
}

func TestTrusted(t *testing.T) {
	for _, tc := range []struct {
		name    string
		daemon  *script
		trusted bool
		err     string
		// repair: the client asked for an empty repair build
		repair bool
	}{
		{"the handshake says trusted", hello(37, trusted), true, "", false},
		{"the handshake says not trusted", hello(37, notTrusted), false, "", false},
		{"a daemon at 1.35 that does not know", hello(37, 0).u64(stderrError).str("Error").u64(0).str("Error", "repairing is not allowed because you are not in 'trusted-users'").u64(0, 0), false, "", true},
		{"Nix 2.8 refuses an untrusted user's repair", hello(34, 0).u64(stderrError).str("Error").u64(0).str("Error", "repairing is not allowed because you are not in 'trusted-users'").u64(0, 0), false, "", true},
		{"an old protocol's plain error", hello(25, 0).u64(stderrError).str("repairing is not allowed because you are not in 'trusted-users'").u64(1), false, "", true},
		{"Nix 2.8 builds nothing for a trusted user, with activities on the way", hello(34, 0).
			u64(stderrStartActivity, 7, 3, 100).str("building").u64(1, 1).str("x").u64(0).
			u64(stderrResult, 7, 101, 1, 0, 5).
			u64(stderrStopActivity, 7).
			u64(stderrLast, 1), true, "", true},
		{"another error is not a verdict", hello(34, 0).u64(stderrError).str("Error").u64(0).str("Error", "disk full").u64(0, 0), false, "it failed an empty build: disk full", true},
		{"a daemon that hangs up", hello(34, 0), false, "EOF", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := trustOver(tc.daemon, "sock")
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %v, %v; want an error saying %q", got, err, tc.err)
				}
			} else if err != nil || got != tc.trusted {
				t.Fatalf("got %v, %v; want %v", got, err, tc.trusted)
			}
			// What the client sent after its handshake (magic, version, affinity, reserveSpace).
			sent := tc.daemon.sent.Bytes()
			asked := len(sent) > 4*8 && bytes.Contains(sent[4*8:], (&script{}).u64(opBuildPaths, 0, bmRepair).Bytes())
			if asked != tc.repair {
				t.Fatalf("asked for an empty repair: %v, want %v", asked, tc.repair)
			}
		})
	}
}
