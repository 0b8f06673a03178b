// Package daemon speaks the first exchange of the Nix daemon's worker protocol: enough to learn
// which protocol and which Nix a daemon runs, without trusting a client binary's idea of it.
package daemon

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

const (
	workerMagic1 = 0x6e697863 // "nixc"
	workerMagic2 = 0x6478696f // "dxio"
	stderrLast   = 0x616c7473 // "alts"
	stderrError  = 0x63787470 // "cxtp"
	stderrNext   = 0x6f6c6d67 // "oglm"

	// clientProtocol is the protocol this client says it speaks: 1.35, which a daemon that sends
	// its version (1.33 and later) answers with that version and no more.
	clientProtocol = 1<<8 | 35
)

// Info is what a daemon says of itself when a client connects.
type Info struct {
	// Protocol is the worker protocol version, "1.34" say.
	Protocol string
	// Version is the daemon's Nix version ("2.26.3"), or "" when its protocol predates sending it.
	Version string
}

// Probe connects to the daemon at socket and reads its handshake.
func Probe(ctx context.Context, socket string) (Info, error) {
	conn, err := dial(ctx, socket)
	if err != nil {
		return Info{}, err
	}
	defer conn.Close()
	info, err := handshake(conn)
	if err != nil {
		return Info{}, fmt.Errorf("nix-daemon at %s: %w", socket, err)
	}
	return info, nil
}

// dial connects to the daemon's socket, with a deadline for the whole exchange: a daemon that
// accepts and never answers must not hang the caller.
func dial(ctx context.Context, socket string) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, fmt.Errorf("connect to nix-daemon at %s: %w", socket, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	conn.SetDeadline(deadline)
	return conn, nil
}

func handshake(rw io.ReadWriter) (Info, error) {
	info, _, _, err := exchange(rw)
	return info, err
}

// exchange runs the handshake up to the daemon's STDERR_LAST. It also returns the daemon's trust
// flag (0, unknown, before protocol 1.35) and the protocol minor version the connection speaks.
func exchange(rw io.ReadWriter) (info Info, trust, minor uint64, err error) {
	fail := func(err error) (Info, uint64, uint64, error) { return info, trust, minor, err }
	if err := writeU64(rw, workerMagic1); err != nil {
		return fail(err)
	}
	magic, err := readU64(rw)
	if err != nil {
		return fail(fmt.Errorf("read the handshake: %w", err))
	}
	if magic != workerMagic2 {
		return fail(fmt.Errorf("it does not speak the worker protocol (magic %#x)", magic))
	}
	server, err := readU64(rw)
	if err != nil {
		return fail(fmt.Errorf("read the protocol version: %w", err))
	}
	if server>>8 != 1 {
		return fail(fmt.Errorf("unknown worker protocol major version %d", server>>8))
	}
	info.Protocol = fmt.Sprintf("%d.%d", server>>8, server&0xff)
	minor = min(server&0xff, clientProtocol&0xff)
	if err := writeU64(rw, clientProtocol); err != nil {
		return fail(err)
	}
	if minor >= 14 {
		if err := writeU64(rw, 0); err != nil { // no CPU affinity
			return fail(err)
		}
	}
	if minor >= 11 {
		if err := writeU64(rw, 0); err != nil { // reserveSpace: no
			return fail(err)
		}
	}
	if minor >= 33 {
		if info.Version, err = readString(rw); err != nil {
			return fail(fmt.Errorf("read the daemon's version: %w", err))
		}
	}
	if minor >= 35 {
		if trust, err = readU64(rw); err != nil { // whether this client is trusted
			return fail(fmt.Errorf("read the trust flag: %w", err))
		}
	}
	// The daemon then reports anything it wants to say, ending with STDERR_LAST.
	for {
		msg, err := readU64(rw)
		if err != nil {
			return fail(fmt.Errorf("read the end of the handshake: %w", err))
		}
		switch msg {
		case stderrLast:
			return info, trust, minor, nil
		case stderrNext:
			if _, err := readString(rw); err != nil {
				return fail(err)
			}
		case stderrError:
			return fail(errors.New("it refused the connection"))
		default:
			return fail(fmt.Errorf("unexpected message %#x in the handshake", msg))
		}
	}
}

func writeU64(w io.Writer, v uint64) error {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], v)
	_, err := w.Write(b[:])
	return err
}

func readU64(r io.Reader) (uint64, error) {
	var b [8]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(b[:]), nil
}

// readString reads a length-prefixed string padded to 8 bytes; a version string is short, so
// anything long is refused rather than allocated.
func readString(r io.Reader) (string, error) {
	n, err := readU64(r)
	if err != nil {
		return "", err
	}
	if n > 4096 {
		return "", fmt.Errorf("a %d-byte string where a short one belongs", n)
	}
	b := make([]byte, (n+7)&^7)
	if _, err := io.ReadFull(r, b); err != nil {
		return "", err
	}
	return string(b[:n]), nil
}
