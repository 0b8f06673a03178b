package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/hearth-ci/hearth/internal/testlog"
)

// syncBuffer is read while it is written.
type syncBuffer = testlog.Buffer

func startServer(t *testing.T) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "agent.sock")
	s := &Server{Socket: sock, StopTimeout: 2 * time.Second, DrainTimeout: 300 * time.Millisecond, Log: slog.New(slog.DiscardHandler)}
	go func() { _ = s.Serve() }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			return sock
		}
		if time.Now().After(deadline) {
			t.Fatal("agent socket did not appear")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestRunStage(t *testing.T) {
	sock := startServer(t)
	tests := []struct {
		name, script string
		code         int
		output       string
	}{
		{"stdout and stderr in order", "echo out; echo err >&2; echo out2", 0, "out\nerr\nout2\n"},
		{"exit code", "echo before; exit 42; echo after", 42, "before\n"},
		{"stdin is the script", "read -r line || true; echo \"[$line]\"\necho tail", 0, "[echo tail]\n"},
		{"killed by signal", "kill -KILL $$", 137, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out syncBuffer
			code, err := Run(context.Background(), sock, Request{Stage: "build_script", Script: tc.script}, &out, time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if code != tc.code || out.String() != tc.output {
				t.Fatalf("got code %d output %q; want %d %q", code, out.String(), tc.code, tc.output)
			}
		})
	}
}

func TestOutputStreamsBeforeExit(t *testing.T) {
	sock := startServer(t)
	var out syncBuffer
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = Run(context.Background(), sock, Request{Script: "echo first; sleep 2; echo second"}, &out, time.Second)
	}()
	deadline := time.Now().Add(1500 * time.Millisecond)
	for !strings.Contains(out.String(), "first") {
		if time.Now().After(deadline) {
			t.Fatal("first line did not arrive while the stage was still running")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if strings.Contains(out.String(), "second") {
		t.Fatal("second line arrived too early")
	}
	<-done
	if out.String() != "first\nsecond\n" {
		t.Fatalf("output %q", out.String())
	}
}

func TestTerminateStopsWholeSession(t *testing.T) {
	sock := startServer(t)
	ctx, cancel := context.WithCancel(context.Background())
	var out syncBuffer
	marker := filepath.Join(t.TempDir(), "child")
	// The child moves to its own process group and ignores SIGTERM: only the session-wide SIGKILL
	// after the stop timeout ends it.
	script := "trap 'exit 1' TERM\n(set -m; trap '' TERM; echo $BASHPID > " + marker + "; exec sleep 600) &\nsleep 600\n"
	res := make(chan int, 1)
	start := time.Now()
	go func() {
		code, err := Run(ctx, sock, Request{Script: script}, &out, 10*time.Second)
		if err != nil {
			t.Error(err)
		}
		res <- code
	}()
	for {
		if b, err := os.ReadFile(marker); err == nil && len(b) > 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	b, _ := os.ReadFile(marker)
	cancel()
	code := <-res
	if code != 1 {
		t.Fatalf("stage exit code %d, want 1 from the TERM trap", code)
	}
	if d := time.Since(start); d > 8*time.Second {
		t.Fatalf("stopping took %s", d)
	}
	pid := strings.TrimSpace(string(b))
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat("/proc/" + pid); os.IsNotExist(err) {
			break
		}
		if st, _ := os.ReadFile("/proc/" + pid + "/stat"); strings.Contains(string(st), ") Z ") {
			break // a zombie of this test process: killed, not yet reaped by anyone
		}
		if time.Now().After(deadline) {
			t.Fatalf("child %s of the stopped stage is still running", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestBackgroundProcessDoesNotHoldStage(t *testing.T) {
	sock := startServer(t)
	var out syncBuffer
	start := time.Now()
	code, err := Run(context.Background(), sock, Request{Script: "sleep 30 &\necho done"}, &out, time.Second)
	if err != nil || code != 0 {
		t.Fatalf("code %d err %v", code, err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("stage with a background process took %s", d)
	}
}

func TestPingReportsIdle(t *testing.T) {
	sock := startServer(t)
	st, err := Ping(context.Background(), sock)
	if err != nil {
		t.Fatal(err)
	}
	if st.Running != 0 || st.IdleSince.IsZero() || st.Problem != "" {
		t.Fatalf("status %+v", st)
	}
}

// The socket's directory belongs to the job: a symlink the job puts in the socket's place, pointing
// at another job's agent, is refused rather than followed.
func TestSymlinkedSocketIsRefused(t *testing.T) {
	other := startServer(t)
	link := filepath.Join(t.TempDir(), "agent.sock")
	if err := os.Symlink(other, link); err != nil {
		t.Fatal(err)
	}
	var out syncBuffer
	if _, err := Run(context.Background(), link, Request{Script: "echo reached"}, &out, time.Second); err == nil || !strings.Contains(err.Error(), "symlink") {
		t.Fatalf("Run through a symlink: %v, output %q", err, out.String())
	}
	if _, err := Ping(context.Background(), link); err == nil {
		t.Fatal("Ping followed a symlink")
	}
	notSocket := filepath.Join(t.TempDir(), "agent.sock")
	if err := os.WriteFile(notSocket, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Ping(context.Background(), notSocket); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("Ping of a regular file: %v", err)
	}
}

// A run request with a long stage name is refused before anything logs it, and the log stops
// growing at its cap however much is logged.
func TestLogIsBounded(t *testing.T) {
	sock := startServer(t)
	var out syncBuffer
	code, err := Run(context.Background(), sock, Request{Stage: strings.Repeat("x", 1<<20), Script: "echo ran"}, &out, time.Second)
	if err == nil && code == 0 || strings.Contains(out.String(), "ran") {
		t.Fatalf("a stage named by a megabyte ran: code %d, %v, %q", code, err, out.String())
	}
	if err == nil || !strings.Contains(err.Error(), "longer than 128") {
		t.Fatalf("error %v does not say why", err)
	}
	var b strings.Builder
	w := CappedLog(&b, 1000)
	for i := 0; i < 100; i++ {
		if n, err := w.Write([]byte(strings.Repeat("y", 99) + "\n")); n != 100 || err != nil {
			t.Fatalf("write: %d, %v", n, err)
		}
	}
	if b.Len() > 1100 || !strings.HasSuffix(b.String(), "agent log truncated: it reached its limit of 1048576 bytes\n") {
		t.Fatalf("capped log of %d bytes ends %q", b.Len(), b.String()[max(0, b.Len()-80):])
	}
}

// A frame header is a claim, not a payload: a peer that announces a 60 MiB frame and sends a few
// bytes makes the reader hold what arrived, not what was announced.
func TestFrameHeaderDoesNotAllocateItsClaim(t *testing.T) {
	hdr := []byte{frameStdout, 0x03, 0xc0, 0x00, 0x00} // 60 MiB
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := 0; i < 10; i++ {
		if _, _, err := readFrame(bytes.NewReader(append(hdr, "a few bytes"...))); err == nil || !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("a cut frame: %v", err)
		}
	}
	runtime.ReadMemStats(&after)
	if got := after.TotalAlloc - before.TotalAlloc; got > 4<<20 {
		t.Fatalf("ten cut 60 MiB frames allocated %d bytes", got)
	}
	// A whole frame still arrives whole.
	payload := bytes.Repeat([]byte("x"), 200<<10)
	var b bytes.Buffer
	if err := writeFrame(&b, frameStdout, payload); err != nil {
		t.Fatal(err)
	}
	typ, got, err := readFrame(&b)
	if err != nil || typ != frameStdout || !bytes.Equal(got, payload) {
		t.Fatalf("round trip: %q, %d bytes, %v", typ, len(got), err)
	}
}

// Each side says its protocol, and the newer one refuses a peer older than it still speaks, before
// a stage starts: the agent a request from a driver too old (here one from before versions, whose
// request says none), the driver an agent too old. Both sides speak every protocol from 0 today;
// minProtocol stands in for a later hearth that does not.
func TestProtocolVersions(t *testing.T) {
	sock := startServer(t)
	st, err := Ping(context.Background(), sock)
	if err != nil || st.Protocol != Protocol {
		t.Fatalf("ping: %+v, %v; want protocol %d", st, err, Protocol)
	}
	marker := filepath.Join(t.TempDir(), "ran")
	script := "touch " + marker

	// A driver from before versions: its request has no protocol.
	old := func() (Exit, error) {
		conn, err := dial(context.Background(), sock)
		if err != nil {
			return Exit{}, err
		}
		defer conn.Close()
		if err := writeFrame(conn, frameRun, []byte(`{"stage":"build_script","script":"`+script+`"}`)); err != nil {
			return Exit{}, err
		}
		for {
			typ, payload, err := readFrame(conn)
			if err != nil {
				return Exit{}, err
			}
			if typ == frameExit {
				var e Exit
				return e, json.Unmarshal(payload, &e)
			}
		}
	}
	if e, err := old(); err != nil || e.Code != 0 || e.Error != "" {
		t.Fatalf("a driver from before versions: %+v, %v", e, err)
	}
	if _, err := os.Stat(marker); err != nil {
		t.Fatalf("the old driver's stage did not run: %v", err)
	}
	os.Remove(marker)

	defer func(m int) { minProtocol = m }(minProtocol)
	minProtocol = 1
	if e, err := old(); err != nil || !strings.Contains(e.Error, "no longer 0, the driver's") {
		t.Fatalf("an agent that no longer speaks the old driver's protocol: %+v, %v", e, err)
	}
	minProtocol = Protocol + 1
	var out syncBuffer
	if _, err := Run(context.Background(), sock, Request{Stage: "build_script", Script: script}, &out, time.Second); err == nil || !strings.Contains(err.Error(), "the job's agent speaks protocol 1, and this hearth only 2 to 1") {
		t.Fatalf("a driver newer than the agent: %v", err)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("a refused stage ran")
	}
}
