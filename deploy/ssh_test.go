package deploy

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"encoding/pem"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/hearth-ci/hearth/config"
	"github.com/hearth-ci/hearth/nixstore"
)

// fakeTarget is an SSH server on 127.0.0.1 that runs each command with handle.
type fakeTarget struct {
	ep     endpoint
	handle func(cmd string, ch ssh.Channel) (exit uint32)
}

func startFakeTarget(t *testing.T, handle func(cmd string, ch ssh.Channel) uint32) *fakeTarget {
	t.Helper()
	dir := t.TempDir()
	_, hostPriv, _ := ed25519.GenerateKey(rand.Reader)
	hostSigner, _ := ssh.NewSignerFromKey(hostPriv)
	clientPub, clientPriv, _ := ed25519.GenerateKey(rand.Reader)
	block, err := ssh.MarshalPrivateKey(clientPriv, "")
	if err != nil {
		t.Fatal(err)
	}
	identity := filepath.Join(dir, "id")
	os.WriteFile(identity, pem.EncodeToMemory(block), 0o600)
	authorized, _ := ssh.NewPublicKey(clientPub)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	known := filepath.Join(dir, "known_hosts")
	os.WriteFile(known, []byte(knownhosts.Line([]string{l.Addr().String()}, hostSigner.PublicKey())+"\n"), 0o600)
	cfg := &ssh.ServerConfig{PublicKeyCallback: func(_ ssh.ConnMetadata, k ssh.PublicKey) (*ssh.Permissions, error) {
		if string(k.Marshal()) == string(authorized.Marshal()) {
			return nil, nil
		}
		return nil, io.EOF
	}}
	cfg.AddHostKey(hostSigner)
	f := &fakeTarget{ep: endpoint{name: "fake", addr: l.Addr().String(), user: "root", knownHosts: known, identity: identity}, handle: handle}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go f.serveConn(c, cfg)
		}
	}()
	return f
}

func (f *fakeTarget) serveConn(c net.Conn, cfg *ssh.ServerConfig) {
	_, chans, reqs, err := ssh.NewServerConn(c, cfg)
	if err != nil {
		return
	}
	go ssh.DiscardRequests(reqs)
	for nc := range chans {
		ch, chReqs, err := nc.Accept()
		if err != nil {
			continue
		}
		go func() {
			for r := range chReqs {
				if r.Type != "exec" {
					r.Reply(false, nil)
					continue
				}
				r.Reply(true, nil)
				cmd := string(r.Payload[4:])
				exit := f.handle(cmd, ch)
				ch.SendRequest("exit-status", false, binary.BigEndian.AppendUint32(nil, exit))
				ch.Close()
			}
		}()
	}
}

// A target whose nix-store --serve fails in the middle of a push: send ends, with what the target
// said, and does not hang.
func TestSendEndsWhenTheTargetFails(t *testing.T) {
	ft := startFakeTarget(t, func(cmd string, ch ssh.Channel) uint32 {
		if !strings.HasSuffix(cmd, " serve") {
			return 127
		}
		var magic [8]byte
		io.ReadFull(ch, magic[:])
		ch.Write(binary.LittleEndian.AppendUint64(binary.LittleEndian.AppendUint64(nil, serveMagic2), serveVersion))
		io.CopyN(io.Discard, ch, 64<<10)
		ch.Stderr().Write([]byte("error: hash mismatch importing path\n"))
		return 1
	})
	dir := t.TempDir()
	big := filepath.Join(dir, "big")
	os.WriteFile(big, make([]byte, 8<<20), 0o644)
	c, err := dial(t.Context(), ft.ep)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s := &session{d: &Deployer{}, t: config.Target{User: "root"}, name: "fake", w: newWrapper("root"), c: c}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- s.send(ctx, []nixstore.PathInfo{{Path: big, NarSize: 8 << 20, NarHash: "sha256:0000000000000000000000000000000000000000000000000000"}})
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "hash mismatch importing path") {
			t.Fatalf("send: %v, want the target's error", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("send hangs after the target's nix-store --serve failed")
	}
}

// A target that does not answer at all: the connect fails with a sentence naming it and its address.
func TestUnreachableTarget(t *testing.T) {
	ft := startFakeTarget(t, func(string, ssh.Channel) uint32 { return 0 })
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	ep := ft.ep
	ep.addr = addr
	_, err := dial(t.Context(), ep)
	if err == nil || !strings.Contains(err.Error(), "connect to fake ("+addr+")") || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("dial: %v", err)
	}
}
