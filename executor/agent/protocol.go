// Package agent is the small process that runs as PID 1 inside every job container, and the client
// the driver uses to talk to it. One long-lived process that forks bash for each stage costs a few
// milliseconds per stage, where a containerd exec costs about a hundred (runc is started each time).
//
// The wire format is a sequence of frames over a unix socket: one type byte, a 4-byte big-endian
// length, then the payload. A connection carries either one ping or one stage.
package agent

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"time"
)

// Frame types.
const (
	frameRun       = 'R' // client → agent: a Request (JSON)
	framePing      = 'P' // client → agent: empty; agent → client: a Status (JSON)
	frameTerminate = 'T' // client → agent: stop the stage (SIGTERM, then SIGKILL after the stop timeout)
	frameStdout    = 'O' // agent → client: a chunk of the stage's output (stdout and stderr, in order)
	frameExit      = 'X' // agent → client: an Exit (JSON); the last frame of a stage
)

// Protocol is the version of this wire format the agent and the driver speak; minProtocol the
// oldest peer they still work with. An agent outlives the hearth that started it: a job prepared
// before hearth was upgraded runs its later stages with the new driver and the old agent (whose
// binary was bind-mounted into its container), and one prepared by a newer hearth may meet an
// older driver after a rollback. The agent states its version in its ping answer, the driver in
// each stage's request, and the newer side decides. Version 0 is hearth before versions were
// stated, whose frames are the same.
const Protocol = 1

// minProtocol is a variable for the tests of a peer too old.
var minProtocol = 0

// maxFrame bounds a frame so that a confused peer cannot make the other side allocate without limit.
// Scripts carry every job variable, so the bound is generous.
const maxFrame = 64 << 20

// Request asks the agent to run one stage.
type Request struct {
	Stage  string `json:"stage"`
	Script string `json:"script"`
	// Protocol is the driver's (0 from drivers before versions).
	Protocol int `json:"protocol,omitempty"`
}

// Exit is how a stage ended. Error is set when the stage could not be started at all.
type Exit struct {
	Code  int    `json:"code"`
	Error string `json:"error,omitempty"`
}

// Status answers a ping.
type Status struct {
	// Problem is non-empty when the environment cannot run stages (for example no bash on PATH).
	Problem string `json:"problem,omitempty"`
	// Running is the number of stages in progress.
	Running int `json:"running"`
	// IdleSince is when the last stage ended (or the agent started); meaningful when Running is 0.
	IdleSince time.Time `json:"idle_since"`
	// Protocol is the agent's (0 from agents before versions).
	Protocol int `json:"protocol,omitempty"`
}

func writeFrame(w io.Writer, typ byte, payload []byte) error {
	var hdr [5]byte
	hdr[0] = typ
	binary.BigEndian.PutUint32(hdr[1:], uint32(len(payload)))
	if _, err := w.Write(append(hdr[:], payload...)); err != nil {
		return err
	}
	return nil
}

func writeJSON(w io.Writer, typ byte, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return writeFrame(w, typ, b)
}

func readFrame(r io.Reader) (byte, []byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n > maxFrame {
		return 0, nil, fmt.Errorf("frame of %d bytes is larger than the limit of %d", n, maxFrame)
	}
	// The buffer grows with what arrives rather than with what the header claims: the peer may be
	// a job's own server in the agent's place, announcing 64 MiB and sending nothing.
	var buf bytes.Buffer
	buf.Grow(int(min(n, frameChunk)))
	if _, err := io.CopyN(&buf, r, int64(n)); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, fmt.Errorf("short frame: %w", err)
	}
	return hdr[0], buf.Bytes(), nil
}

// frameChunk is what readFrame reserves before any of a frame's payload has arrived: the size of
// the agent's output chunks.
const frameChunk = 32 << 10
