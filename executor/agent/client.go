package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// dial connects to the agent's socket without following a symlink. The directory holding the
// socket is writable by the job (the agent, which runs as the job's user, creates the socket
// there), so the job could put a symlink in its place, pointing at another job's agent.
func dial(ctx context.Context, socket string) (net.Conn, error) {
	fd, err := unix.Open(socket, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		if err == unix.ELOOP {
			return nil, fmt.Errorf("%s is a symlink, not the agent's socket: the job replaced it", socket)
		}
		return nil, &net.OpError{Op: "dial", Net: "unix", Err: &os.PathError{Op: "open", Path: socket, Err: err}}
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, err
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFSOCK:
	case unix.S_IFLNK: // O_PATH|O_NOFOLLOW opens the link itself
		return nil, fmt.Errorf("%s is a symlink, not the agent's socket: the job replaced it", socket)
	default:
		return nil, fmt.Errorf("%s is not a socket: the job replaced it", socket)
	}
	// Connecting through the descriptor reaches exactly the inode checked above.
	var d net.Dialer
	return d.DialContext(ctx, "unix", fmt.Sprintf("/proc/self/fd/%d", fd))
}

// Ping asks the agent behind socket how it is.
func Ping(ctx context.Context, socket string) (Status, error) {
	var st Status
	conn, err := dial(ctx, socket)
	if err != nil {
		return st, err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	if err := writeFrame(conn, framePing, nil); err != nil {
		return st, err
	}
	typ, payload, err := readFrame(conn)
	if err != nil {
		return st, fmt.Errorf("read ping answer: %w", err)
	}
	if typ != framePing {
		return st, fmt.Errorf("agent answered a ping with frame %q", typ)
	}
	return st, json.Unmarshal(payload, &st)
}

// ErrLost means the connection to the agent broke before the stage reported how it ended.
var ErrLost = errors.New("lost the connection to the job container's agent")

// Run runs one stage and copies its output (stdout and stderr as one stream) to out as it arrives. When ctx is
// cancelled the agent is asked to stop the stage, and Run still waits, at most grace, for the
// stage to end so that its exit status and last output are not lost.
func Run(ctx context.Context, socket string, req Request, out io.Writer, grace time.Duration) (int, error) {
	// Connecting to a local socket is immediate; 5 s covers a loaded host. It is not the stage's
	// context: a stage cancelled before it started must still be told to stop.
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	// The agent may be older than this driver (see Protocol): ask before anything starts.
	st, err := Ping(dctx, socket)
	if err != nil {
		return 0, err
	}
	if st.Protocol < minProtocol {
		return 0, fmt.Errorf("the job's agent speaks protocol %d, and this hearth only %d to %d: the job was prepared before hearth was upgraded; run it again", st.Protocol, minProtocol, Protocol)
	}
	conn, err := dial(dctx, socket)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	req.Protocol = Protocol
	if err := writeJSON(conn, frameRun, req); err != nil {
		return 0, fmt.Errorf("send stage: %w", err)
	}

	type result struct {
		exit Exit
		err  error
	}
	done := make(chan result, 1)
	go func() {
		for {
			typ, payload, err := readFrame(conn)
			if err != nil {
				done <- result{err: fmt.Errorf("%w: %v", ErrLost, err)}
				return
			}
			switch typ {
			case frameStdout:
				_, _ = out.Write(payload)
			case frameExit:
				var e Exit
				if err := json.Unmarshal(payload, &e); err != nil {
					done <- result{err: fmt.Errorf("bad exit frame: %w", err)}
					return
				}
				done <- result{exit: e}
				return
			}
		}
	}()

	var r result
	select {
	case r = <-done:
	case <-ctx.Done():
		_ = writeFrame(conn, frameTerminate, nil)
		select {
		case r = <-done:
		case <-time.After(grace):
			return 0, fmt.Errorf("the stage did not stop within %s of being asked to", grace)
		}
	}
	if r.err != nil {
		return 0, r.err
	}
	if r.exit.Error != "" {
		return 0, errors.New(r.exit.Error)
	}
	return r.exit.Code, nil
}
