package deploy

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/hearth-ci/hearth/config"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// hearth speaks SSH itself (golang.org/x/crypto/ssh) rather than running OpenSSH: it reads the
// pinned host key and the identity itself, so no ssh_config, agent or ControlMaster on the runner
// host can change what it trusts or multiplex the confirmation onto the connection it confirms;
// and one connection carries all of a target's commands without a process per command.

const (
	// dialTimeout bounds connecting and the SSH handshake: a target that does not answer within it
	// is unreachable, not slow.
	dialTimeout = 10 * time.Second
	// keepalive is how often an idle connection is probed, and a connection that misses
	// keepaliveMisses probes in a row is dropped, so a cut network is noticed in seconds rather
	// than when TCP gives up.
	keepalive       = 2 * time.Second
	keepaliveMisses = 3
)

// HostKeyError is a host key that is not pinned, or differs from the pinned one.
type HostKeyError struct {
	Target, Addr, KnownHosts string
	// Presented is the key's fingerprint; Pinned the fingerprints pinned for the address.
	Presented string
	Pinned    []string
	Key       ssh.PublicKey
}

func (e *HostKeyError) Error() string {
	host, port, _ := net.SplitHostPort(e.Addr)
	if len(e.Pinned) == 0 {
		return fmt.Sprintf("the host key of %s (%s, %s %s) is not pinned in %s: after checking that fingerprint on the server's console (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub), pin it with `ssh-keyscan -p %s -t ed25519 %s >> %s`",
			e.Target, e.Addr, e.Key.Type(), e.Presented, e.KnownHosts, port, host, e.KnownHosts)
	}
	return fmt.Sprintf("the host key of %s (%s) has changed: it presents %s %s but %s pins %s. If the server was reinstalled, replace its line in %s after checking the new fingerprint on its console; otherwise someone may be intercepting the connection",
		e.Target, e.Addr, e.Key.Type(), e.Presented, e.KnownHosts, strings.Join(e.Pinned, ", "), e.KnownHosts)
}

// endpoint is how to reach one target.
type endpoint struct {
	name, addr, user string
	knownHosts       string
	identity         string
}

// endpointOf is how to reach the configured target name.
func endpointOf(name string, t config.Target) endpoint {
	return endpoint{name: name, addr: hostPort(t.Host, t.Port), user: t.User, knownHosts: t.KnownHostsFile, identity: t.IdentityFile}
}

// conn is one SSH connection to a target.
type conn struct {
	client *ssh.Client
	ep     endpoint
	done   chan struct{}
}

// dial connects and authenticates, with the host key checked against the pinned file.
func dial(ctx context.Context, ep endpoint) (*conn, error) {
	signer, err := readIdentity(ep.identity)
	if err != nil {
		return nil, err
	}
	check, algorithms, err := hostKeyCheck(ep)
	if err != nil {
		return nil, err
	}
	cfg := &ssh.ClientConfig{
		User:              ep.user,
		Auth:              []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback:   check,
		HostKeyAlgorithms: algorithms,
		Timeout:           dialTimeout,
	}
	dctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	var d net.Dialer
	tcp, err := d.DialContext(dctx, "tcp", ep.addr)
	if err != nil {
		return nil, fmt.Errorf("connect to %s (%s): %w", ep.name, ep.addr, err)
	}
	// The handshake has no context of its own: a deadline on the socket bounds it, and a cancel
	// closes the socket.
	deadline, _ := dctx.Deadline()
	tcp.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { tcp.Close() })
	c, chans, reqs, err := ssh.NewClientConn(tcp, ep.addr, cfg)
	stop()
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		tcp.Close()
		var hk *HostKeyError
		if errors.As(err, &hk) {
			return nil, hk
		}
		if strings.Contains(err.Error(), "unable to authenticate") {
			return nil, fmt.Errorf("log in to %s (%s) as %s with %s: the target refused the key: add its public half to ~%s/.ssh/authorized_keys there", ep.name, ep.addr, ep.user, ep.identity, ep.user)
		}
		return nil, fmt.Errorf("SSH to %s (%s): %w", ep.name, ep.addr, err)
	}
	tcp.SetDeadline(time.Time{})
	cn := &conn{client: ssh.NewClient(c, chans, reqs), ep: ep, done: make(chan struct{})}
	go cn.keepalive()
	return cn, nil
}

func readIdentity(path string) (ssh.Signer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read the SSH identity: %w", err)
	}
	s, err := ssh.ParsePrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("SSH identity %s: %w (it must be an unencrypted private key, e.g. from ssh-keygen -t ed25519 -N '')", path, err)
	}
	return s, nil
}

// hostKeyCheck returns the callback that accepts only the pinned key, turning knownhosts' errors
// into a HostKeyError, and the key algorithms pinned for the address, so that the server presents
// a key of a pinned type rather than whichever it prefers.
func hostKeyCheck(ep endpoint) (ssh.HostKeyCallback, []string, error) {
	if _, err := os.Stat(ep.knownHosts); err != nil {
		return nil, nil, fmt.Errorf("the known-hosts file of %s: %w; pin its host key with `ssh-keyscan -t ed25519 HOST > %s`", ep.name, err, ep.knownHosts)
	}
	cb, err := knownhosts.New(ep.knownHosts)
	if err != nil {
		return nil, nil, fmt.Errorf("read the known-hosts file of %s: %w", ep.name, err)
	}
	// Ask for a key no host has, to learn which keys are pinned for the address.
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	probe, _ := ssh.NewPublicKey(pub)
	var pinned []knownhosts.KnownKey
	var ke *knownhosts.KeyError
	if err := cb(ep.addr, fakeAddr(ep.addr), probe); errors.As(err, &ke) {
		pinned = ke.Want
	}
	var algorithms []string
	for _, k := range pinned {
		switch t := k.Key.Type(); t {
		case ssh.KeyAlgoRSA:
			algorithms = append(algorithms, ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256)
		default:
			algorithms = append(algorithms, t)
		}
	}
	check := func(hostname string, remote net.Addr, key ssh.PublicKey) error {
		err := cb(hostname, remote, key)
		var ke *knownhosts.KeyError
		if errors.As(err, &ke) {
			hk := &HostKeyError{Target: ep.name, Addr: ep.addr, KnownHosts: ep.knownHosts, Presented: ssh.FingerprintSHA256(key), Key: key}
			for _, w := range ke.Want {
				hk.Pinned = append(hk.Pinned, fmt.Sprintf("%s %s (line %d)", w.Key.Type(), ssh.FingerprintSHA256(w.Key), w.Line))
			}
			return hk
		}
		return err
	}
	return check, algorithms, nil
}

type fakeAddr string

func (a fakeAddr) Network() string { return "tcp" }
func (a fakeAddr) String() string  { return string(a) }

// keepalive probes the connection and closes it when the target stops answering.
func (c *conn) keepalive() {
	t := time.NewTicker(keepalive)
	defer t.Stop()
	missed := 0
	for {
		select {
		case <-c.done:
			return
		case <-t.C:
		}
		answered := make(chan error, 1)
		go func() {
			_, _, err := c.client.SendRequest("keepalive@openssh.com", true, nil)
			answered <- err
		}()
		select {
		case err := <-answered:
			if err != nil {
				c.client.Close()
				return
			}
			missed = 0
		case <-time.After(keepalive):
			if missed++; missed >= keepaliveMisses {
				c.client.Close()
				return
			}
		case <-c.done:
			return
		}
	}
}

func (c *conn) Close() error {
	select {
	case <-c.done:
	default:
		close(c.done)
	}
	return c.client.Close()
}

// exitError is a command that ran on the target and exited non-zero.
type exitError struct {
	Code   int
	Stderr string
}

func (e *exitError) Error() string {
	if e.Stderr != "" {
		return fmt.Sprintf("exit code %d: %s", e.Code, e.Stderr)
	}
	return fmt.Sprintf("exit code %d", e.Code)
}

// errDisconnected is a command whose connection dropped before it ended.
var errDisconnected = errors.New("the connection dropped")

// run runs a command line on the target, with stdin as its input and its output to stdout. It
// ends when the command does, or when ctx does (closing the session, which the target sees as a
// hang-up). Its error is an *exitError for a command that failed, errDisconnected for a
// connection that dropped.
func (c *conn) run(ctx context.Context, cmd string, stdin io.Reader, stdout io.Writer) error {
	s, err := c.client.NewSession()
	if err != nil {
		return fmt.Errorf("%w: %v", errDisconnected, err)
	}
	defer s.Close()
	var stderr bytes.Buffer
	s.Stdin = stdin
	s.Stdout = stdout
	s.Stderr = &stderr
	if err := s.Start(cmd); err != nil {
		return fmt.Errorf("%w: %v", errDisconnected, err)
	}
	ended := make(chan error, 1)
	go func() { ended <- s.Wait() }()
	select {
	case <-ctx.Done():
		s.Close()
		// Closing the session ends its copiers soon; wait for them, so that nothing writes to
		// stdout after run returns.
		select {
		case <-ended:
		case <-time.After(time.Second):
		}
		return ctx.Err()
	case err = <-ended:
	}
	var ee *ssh.ExitError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ee):
		return &exitError{Code: ee.ExitStatus(), Stderr: strings.TrimSpace(stderr.String())}
	default:
		// An ExitMissingError, or io errors: the connection went away.
		return fmt.Errorf("%w: %v", errDisconnected, err)
	}
}

// output runs cmd and returns what it printed.
func (c *conn) output(ctx context.Context, cmd string, stdin io.Reader) (string, error) {
	var out bytes.Buffer
	err := c.run(ctx, cmd, stdin, &out)
	return out.String(), err
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-+=:@") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func hostPort(host string, port int) string { return net.JoinHostPort(host, strconv.Itoa(port)) }
