package daemon

import (
	"context"
	"fmt"
	"io"
	"strings"
)

const (
	opBuildPaths = 9
	bmRepair     = 1
	// The handshake's trust flag (protocol 1.35 and later); 0 is "unknown".
	trusted    = 1
	notTrusted = 2
)

// Trusted says whether the daemon at socket takes this process's user for a trusted user, as it
// would a job's processes of the same uid. Newer daemons say so in the handshake; older ones
// (Nix 2.8) are asked for what only a trusted user may do (see repairRefused).
func Trusted(ctx context.Context, socket string) (bool, error) {
	conn, err := dial(ctx, socket)
	if err != nil {
		return false, err
	}
	defer conn.Close()
	return trustOver(conn, socket)
}

// trustOver runs Trusted's exchange over a connection.
func trustOver(conn io.ReadWriter, socket string) (bool, error) {
	_, flag, minor, err := exchange(conn)
	if err != nil {
		return false, fmt.Errorf("nix-daemon at %s: %w", socket, err)
	}
	switch flag {
	case trusted:
		return true, nil
	case notTrusted:
		return false, nil
	}
	refused, err := repairRefused(conn, minor)
	if err != nil {
		return false, fmt.Errorf("nix-daemon at %s: %w", socket, err)
	}
	return !refused, nil
}

// repairRefused asks the daemon to repair-build nothing. A daemon refuses repairs to anyone it
// does not trust ("repairing is not allowed because you are not in 'trusted-users'"), before it
// looks at what to build; from a trusted user, building no paths does nothing. (Restricted
// settings would tell as well, but a Nix 2.8 daemon ignores them without a word.)
func repairRefused(rw io.ReadWriter, minor uint64) (bool, error) {
	for _, v := range []uint64{opBuildPaths, 0, bmRepair} {
		if err := writeU64(rw, v); err != nil {
			return false, err
		}
	}
	for {
		msg, err := readU64(rw)
		if err != nil {
			return false, fmt.Errorf("read the answer to buildPaths: %w", err)
		}
		switch msg {
		case stderrNext:
			if _, err := readString(rw); err != nil {
				return false, err
			}
		case stderrError:
			text, err := readError(rw, minor)
			if err != nil {
				return false, err
			}
			if !strings.Contains(text, "trusted-users") {
				return false, fmt.Errorf("it failed an empty build: %s", text)
			}
			return true, nil
		case stderrLast:
			return false, nil
		case stderrStartActivity, stderrStopActivity, stderrResult:
			if err := skipActivity(rw, msg); err != nil {
				return false, err
			}
		default:
			return false, fmt.Errorf("unexpected message %#x after buildPaths", msg)
		}
	}
}

const (
	stderrStartActivity = 0x53545254 // "STRT"
	stderrStopActivity  = 0x53544f50 // "STOP"
	stderrResult        = 0x52534c54 // "RSLT"
)

// skipActivity reads past one of the structured log messages daemons send (protocol 1.20 and
// later): an activity's start (id, level, type, text, fields, parent), its stop (id), or a result
// (id, type, fields).
func skipActivity(r io.Reader, msg uint64) error {
	u64 := func(n int) error {
		for i := 0; i < n; i++ {
			if _, err := readU64(r); err != nil {
				return err
			}
		}
		return nil
	}
	switch msg {
	case stderrStopActivity:
		return u64(1)
	case stderrResult:
		if err := u64(2); err != nil {
			return err
		}
		return skipFields(r)
	}
	if err := u64(3); err != nil {
		return err
	}
	if _, err := readString(r); err != nil {
		return err
	}
	if err := skipFields(r); err != nil {
		return err
	}
	return u64(1)
}

// skipFields reads a log message's fields: a count, then each field's type (0 a number, 1 a
// string) and value.
func skipFields(r io.Reader) error {
	n, err := readU64(r)
	if err != nil {
		return err
	}
	if n > 64 {
		return fmt.Errorf("a log message with %d fields", n)
	}
	for i := uint64(0); i < n; i++ {
		kind, err := readU64(r)
		if err != nil {
			return err
		}
		switch kind {
		case 0:
			_, err = readU64(r)
		case 1:
			_, err = readString(r)
		default:
			err = fmt.Errorf("a log field of unknown type %d", kind)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// readError reads the message of a STDERR_ERROR: since protocol 1.26 a structured error whose
// fourth field is the message, before that the message and an exit status.
func readError(r io.Reader, minor uint64) (string, error) {
	if minor < 26 {
		return readString(r)
	}
	if _, err := readString(r); err != nil { // "Error"
		return "", err
	}
	if _, err := readU64(r); err != nil { // level
		return "", err
	}
	if _, err := readString(r); err != nil { // name
		return "", err
	}
	return readString(r)
}

func writeString(w io.Writer, s string) error {
	if err := writeU64(w, uint64(len(s))); err != nil {
		return err
	}
	b := make([]byte, (len(s)+7)&^7)
	copy(b, s)
	_, err := w.Write(b)
	return err
}
