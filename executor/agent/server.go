package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Server runs stages inside the container. It is meant to be PID 1 there: it reaps every child
// that gets reparented to it, so jobs that leave daemons behind do not fill the table with zombies.
type Server struct {
	// Socket is where to listen; its directory is shared with the host.
	Socket string
	// StopTimeout is how long a stage has between SIGTERM and SIGKILL.
	StopTimeout time.Duration
	// DrainTimeout bounds how long output is still forwarded after a stage's shell has exited,
	// for background processes that keep its stdout open.
	DrainTimeout time.Duration
	Log          *slog.Logger

	mu        sync.Mutex
	running   int
	idleSince time.Time
	reaper    *reaper
}

// Serve listens on s.Socket until the process is killed.
func (s *Server) Serve() error {
	if s.DrainTimeout == 0 {
		s.DrainTimeout = time.Second // see DrainTimeout
	}
	if s.Log == nil {
		s.Log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	s.idleSince = time.Now()
	// Not dumpable: the job's processes run as the same user, and could otherwise ptrace the
	// agent or read its memory and environment through /proc/1.
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		s.Log.Warn("cannot make the agent undumpable", "err", err)
	}
	s.reaper = processReaper()
	_ = os.Remove(s.Socket)
	ln, err := net.Listen("unix", s.Socket+".new")
	if err != nil {
		return fmt.Errorf("listen on %s: %w", s.Socket, err)
	}
	// The socket appears under its final name only once it accepts connections, so the host
	// can treat its existence as "the agent is up".
	if err := os.Rename(s.Socket+".new", s.Socket); err != nil {
		return fmt.Errorf("publish socket %s: %w", s.Socket, err)
	}
	for {
		conn, err := ln.Accept()
		if err != nil {
			return fmt.Errorf("accept: %w", err)
		}
		go s.handle(conn)
	}
}

func (s *Server) handle(conn net.Conn) {
	defer conn.Close()
	typ, payload, err := readFrame(conn)
	if err != nil {
		return
	}
	switch typ {
	case framePing:
		_ = writeJSON(conn, framePing, s.status())
	case frameRun:
		var req Request
		if err := json.Unmarshal(payload, &req); err != nil {
			_ = writeJSON(conn, frameExit, Exit{Code: -1, Error: "bad request: " + err.Error()})
			return
		}
		// The stage name is the client's to choose, and it is logged: keep it short.
		if len(req.Stage) > maxStage {
			_ = writeJSON(conn, frameExit, Exit{Code: -1, Error: fmt.Sprintf("bad request: a stage name of %d bytes is longer than %d", len(req.Stage), maxStage)})
			return
		}
		s.run(conn, req)
	default:
		_ = writeJSON(conn, frameExit, Exit{Code: -1, Error: fmt.Sprintf("unknown frame type %q", typ)})
	}
}

func (s *Server) status() Status {
	st := Status{Protocol: Protocol}
	if _, err := exec.LookPath("bash"); err != nil {
		st.Problem = fmt.Sprintf("no bash on PATH (%s): the environment must provide bash", os.Getenv("PATH"))
	}
	s.mu.Lock()
	st.Running, st.IdleSince = s.running, s.idleSince
	s.mu.Unlock()
	return st
}

func (s *Server) run(conn net.Conn, req Request) {
	s.mu.Lock()
	s.running++
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.running--
		s.idleSince = time.Now()
		s.mu.Unlock()
	}()

	var wmu sync.Mutex
	send := func(typ byte, b []byte) {
		wmu.Lock()
		defer wmu.Unlock()
		_ = writeFrame(conn, typ, b)
	}
	sendExit := func(e Exit) {
		b, _ := json.Marshal(e)
		send(frameExit, b)
	}
	if req.Protocol < minProtocol {
		sendExit(Exit{Code: -1, Error: fmt.Sprintf("the job's agent speaks protocol %d and no longer %d, the driver's: this job was prepared by a newer hearth than the one running its stages; run the job again", Protocol, req.Protocol)})
		return
	}

	st, err := s.start(req.Script)
	if err != nil {
		sendExit(Exit{Code: -1, Error: err.Error()})
		return
	}
	s.Log.Info("stage started", "stage", req.Stage, "pid", st.pid)

	forwarded := make(chan struct{})
	go func() {
		defer close(forwarded)
		buf := make([]byte, frameChunk)
		for {
			n, err := st.output.Read(buf)
			if n > 0 {
				send(frameStdout, buf[:n])
			}
			if err != nil {
				return
			}
		}
	}()

	stageDone := make(chan struct{})
	defer close(stageDone)
	go s.unwedge(st, stageDone, func(line string) { send(frameStdout, []byte(line)) })

	// Anything the client sends now is a request to stop; so is the client going away.
	stop := make(chan struct{})
	go func() {
		for {
			typ, _, err := readFrame(conn)
			if err != nil || typ == frameTerminate {
				close(stop)
				return
			}
		}
	}()

	var ws syscall.WaitStatus
	select {
	case ws = <-st.done:
	case <-stop:
		s.Log.Info("stopping stage", "stage", req.Stage, "pid", st.pid)
		deadline := time.Now().Add(s.StopTimeout)
		signalSession(st.pid, syscall.SIGTERM)
		select {
		case ws = <-st.done:
		case <-time.After(s.StopTimeout):
			signalSession(st.pid, syscall.SIGKILL)
			ws = <-st.done
		}
		// The shell obeyed; what it started gets the rest of the grace period, then SIGKILL.
		for sessionAlive(st.pid) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		signalSession(st.pid, syscall.SIGKILL)
	}
	// The shell is gone; its background children may still hold the pipes. Forward what they
	// write for a moment, then stop listening so that the stage can end.
	select {
	case <-forwarded:
	case <-time.After(s.DrainTimeout):
		st.output.Close()
		<-forwarded
	}
	st.output.Close()
	st.stdin.Close()
	code := ws.ExitStatus()
	if ws.Signaled() {
		code = 128 + int(ws.Signal())
	}
	s.Log.Info("stage ended", "stage", req.Stage, "code", code)
	sendExit(Exit{Code: code})
}

type stage struct {
	pid int
	// output is the read end of the one pipe bash writes both stdout and stderr to: a job log is a
	// single stream, and one pipe keeps the two in the order they were written. (A pipe, not a
	// socket: scripts write to /dev/stderr, which cannot be opened on a socket.)
	output *os.File
	// stdin is the write end of the script's pipe; closed when the stage ends, in case a process
	// that outlived bash still holds the read end with part of the script unread.
	stdin *os.File
	done  <-chan syscall.WaitStatus
}

// start forks bash in a session of its own, with the script on its stdin.
func (s *Server) start(script string) (*stage, error) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		return nil, fmt.Errorf("no bash on PATH (%s): the environment must provide bash", os.Getenv("PATH"))
	}
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return nil, err
	}
	attr := &syscall.ProcAttr{
		Dir:   "/",
		Env:   os.Environ(),
		Files: []uintptr{inR.Fd(), outW.Fd(), outW.Fd()},
		Sys:   &syscall.SysProcAttr{Setsid: true},
	}
	pid, done, err := s.reaper.start(bash, []string{"bash"}, attr)
	inR.Close()
	outW.Close()
	if err != nil {
		inW.Close()
		outR.Close()
		return nil, fmt.Errorf("start bash: %w", err)
	}
	go func() {
		_, _ = io.WriteString(inW, script)
		inW.Close()
	}()
	return &stage{pid: pid, output: outR, stdin: inW, done: done}, nil
}

// unwedge keeps a process the script left behind from holding the stage's output for good. A
// process that sendfile()s from a socket into the output pipe (busybox cat does, reading a
// connection) holds the pipe's lock while it waits for data; every other writer, the script's
// own echo included, and the agent reading then block on that lock in the kernel, and the stage
// never ends. Such a writer is in uninterruptible sleep in the pipe's write, where a writer to a
// merely full pipe sleeps interruptibly: when one stays so for two looks a second apart, the
// orphans of the session (reparented to the agent) that hold the pipe are killed, and the job
// log says so.
func (s *Server) unwedge(st *stage, done <-chan struct{}, say func(string)) {
	// Stat, not Fd: Fd would put the pipe in blocking mode, and closing it would no longer end a
	// read in progress.
	fi, err := st.output.Stat()
	if err != nil {
		return
	}
	pipe, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return
	}
	holds := "pipe:[" + strconv.FormatUint(pipe.Ino, 10) + "]"
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	stuck := 0
	for {
		select {
		case <-done:
			return
		case <-tick.C:
		}
		wedged := false
		forSession(st.pid, func(pid int) {
			if state, wchan := procState(pid); state == "D" && strings.Contains(wchan, "pipe_write") {
				wedged = true
			}
		})
		if !wedged {
			stuck = 0
			continue
		}
		if stuck++; stuck < 2 {
			continue
		}
		forSession(st.pid, func(pid int) {
			if ps, err := statOf(pid); err != nil || ps.ppid != os.Getpid() || pid == st.pid || !holdsFile(pid, holds) {
				return
			}
			_ = syscall.Kill(pid, syscall.SIGKILL)
			name, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
			s.Log.Info("killed a leftover holding the stage's output", "pid", pid, "command", strings.TrimSpace(string(name)))
			say(fmt.Sprintf("hearth: killed %s (pid %d), which the script left behind holding the job log's output while it waited on a connection; the script could not write until then\n", strings.TrimSpace(string(name)), pid))
		})
		stuck = 0
	}
}

// procState is a process's state letter and the kernel function it sleeps in.
func procState(pid int) (state, wchan string) {
	st, _ := statOf(pid)
	w, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/wchan")
	return st.state, string(w)
}

// holdsFile reports whether the process has a descriptor whose link reads target.
func holdsFile(pid int, target string) bool {
	dir := "/proc/" + strconv.Itoa(pid) + "/fd"
	ents, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	for _, e := range ents {
		if l, err := os.Readlink(dir + "/" + e.Name()); err == nil && l == target {
			return true
		}
	}
	return false
}

// signalSession signals every process in the session led by sid: the stage's shell and whatever
// it started, including processes that moved to another process group.
func signalSession(sid int, sig syscall.Signal) {
	_ = syscall.Kill(-sid, sig)
	forSession(sid, func(pid int) { _ = syscall.Kill(pid, sig) })
}

// forSession calls fn for each live process of session sid.
func forSession(sid int, fn func(pid int)) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == 1 {
			continue
		}
		if st, err := statOf(pid); err == nil && st.sid == sid && st.state != "Z" {
			fn(pid)
		}
	}
}

// sessionAlive reports whether any process other than a zombie is left in session sid.
func sessionAlive(sid int) bool {
	alive := false
	forSession(sid, func(int) { alive = true })
	return alive
}

// procStat is what /proc/PID/stat says of a process that the agent uses.
type procStat struct {
	state     string
	ppid, sid int
}

// statOf reads a process's state, parent and session from /proc/PID/stat.
func statOf(pid int) (procStat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, err
	}
	// The command name is in parentheses and may contain spaces; fields after it are fixed.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return procStat{}, errors.New("malformed stat")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 4 {
		return procStat{}, errors.New("malformed stat")
	}
	ppid, err1 := strconv.Atoi(f[1])
	sid, err2 := strconv.Atoi(f[3])
	if err1 != nil || err2 != nil {
		return procStat{}, errors.New("malformed stat")
	}
	return procStat{state: f[0], ppid: ppid, sid: sid}, nil
}
