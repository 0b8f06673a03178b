// Command probe tries, from inside a job container, what a hostile job would: each attack prints
// one line, "probe NAME: denied (why)" or "probe NAME: ALLOWED". Tests read the lines; the probe
// decides nothing. It is built static, so any environment can run it.
package main

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// With -only NAME…, only the attacks named run: the tests' controls run a few on the host, where
// the others (a mount, the hostname, the clock) would change it.
func main() {
	args := os.Args[1:]
	var only []string
	if len(args) > 0 && args[0] == "-only" {
		only, args = args[1:], nil
	}
	for _, a := range attacks(args) {
		if only != nil && !slices.Contains(only, a.name) {
			continue
		}
		if err := a.try(); err != nil {
			fmt.Printf("probe %s: denied (%v)\n", a.name, err)
		} else {
			fmt.Printf("probe %s: ALLOWED\n", a.name)
		}
	}
}

type attack struct {
	name string
	try  func() error
}

// attacks are the probes; sockets names host paths of sockets the job must not reach.
func attacks(sockets []string) []attack {
	as := []attack{
		{"mount", func() error {
			_ = os.MkdirAll("/tmp/probe-mnt", 0o755)
			return unix.Mount("none", "/tmp/probe-mnt", "tmpfs", 0, "")
		}},
		{"unshare-user", func() error { return unix.Unshare(unix.CLONE_NEWUSER) }},
		{"unshare-mount", func() error { return unix.Unshare(unix.CLONE_NEWNS) }},
		{"unshare-net", func() error { return unix.Unshare(unix.CLONE_NEWNET) }},
		{"raw-socket", func() error { return socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_ICMP) }},
		{"packet-socket", func() error { return socket(unix.AF_PACKET, unix.SOCK_RAW, 0) }},
		// The kernel's crypto sockets: the way into the page cache of CVE-2026-31431 ("Copy
		// Fail"). A kernel without them says EAFNOSUPPORT; only the seccomp filter says EPERM.
		{"af-alg-socket", func() error { return socket(unix.AF_ALG, unix.SOCK_SEQPACKET, 0) }},
		{"vsock-socket", func() error { return socket(unix.AF_VSOCK, unix.SOCK_STREAM, 0) }},
		{"keyctl", func() error {
			_, err := unix.KeyctlJoinSessionKeyring("probe")
			return err
		}},
		{"add-key", func() error {
			_, err := unix.AddKey("user", "probe", []byte("x"), unix.KEY_SPEC_PROCESS_KEYRING)
			return err
		}},
		{"mknod", func() error { return unix.Mknod("/tmp/probe-sda", unix.S_IFBLK|0o600, int(unix.Mkdev(8, 0))) }},
		{"write-proc-sys", func() error { return writeFile("/proc/sys/kernel/hostname", "probe") }},
		{"write-sys", func() error { return writeFile("/sys/kernel/mm/ksm/run", "1") }},
		{"ptrace-agent", func() error {
			if err := unix.PtraceAttach(1); err != nil {
				return err
			}
			return unix.PtraceDetach(1)
		}},
		{"read-agent-environ", func() error {
			_, err := os.ReadFile("/proc/1/environ")
			return err
		}},
		{"host-processes", func() error {
			// The host's init, or any process that is not the container's, would be visible.
			ents, err := os.ReadDir("/proc")
			if err != nil {
				return err
			}
			n := 0
			for _, e := range ents {
				if _, err := strconv.Atoi(e.Name()); err == nil {
					n++
				}
			}
			cmd, _ := os.ReadFile("/proc/1/cmdline")
			if !strings.Contains(string(cmd), "agent") {
				return nil // PID 1 is not the job's agent: the host's processes are in view
			}
			if n > 64 {
				return nil
			}
			return fmt.Errorf("%d processes in view, PID 1 is the job's agent", n)
		}},
		{"reboot", func() error { return unix.Reboot(unix.LINUX_REBOOT_CMD_CAD_OFF) }},
		{"set-time", func() error {
			tv := unix.NsecToTimeval(0)
			return unix.Settimeofday(&tv)
		}},
		{"kernel-module", func() error { return unix.DeleteModule("probe", 0) }},
	}
	for _, s := range sockets {
		s := s
		as = append(as, attack{"connect " + s, func() error {
			fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
			if err != nil {
				return err
			}
			defer unix.Close(fd)
			return unix.Connect(fd, &unix.SockaddrUnix{Name: s})
		}})
	}
	return as
}

func socket(domain, typ, proto int) error {
	fd, err := unix.Socket(domain, typ, proto)
	if err == nil {
		unix.Close(fd)
	}
	return err
}

func writeFile(path, content string) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = f.WriteString(content)
	return err
}
