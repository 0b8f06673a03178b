// Package nar serializes file trees in the Nix Archive (NAR) format.
//
// The output is byte-identical to `nix-store --dump PATH`: the same
// canonical form Nix hashes and signs, so archives produced here can be
// pushed to and verified by a Nix binary cache.
package nar

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sort"
	"syscall"
)

const (
	// The copy buffer is sized so large files cost few read/write
	// syscalls, while staying small enough to allocate once per Dump.
	copyBufSize = 256 << 10
	// Headers are tiny and numerous; batching them avoids a write
	// syscall per token when w is unbuffered (a pipe, a socket).
	writeBufSize = 64 << 10
)

// Token sequences that never vary are encoded once, so emitting a node
// header is a single buffered write instead of several length/padding
// computations.
var (
	tokMagic      = tokens("nix-archive-1")
	tokRegular    = tokens("(", "type", "regular")
	tokExecutable = tokens("executable", "")
	tokContents   = tokens("contents")
	tokSymlink    = tokens("(", "type", "symlink", "target")
	tokDirectory  = tokens("(", "type", "directory")
	tokEntryName  = tokens("entry", "(", "name")
	tokNode       = tokens("node")
	tokClose      = tokens(")")
	zeroPad       [8]byte
)

const errSizeChanged = "file changed size while being read"

func tokens(ss ...string) []byte {
	var b []byte
	for _, s := range ss {
		b = binary.LittleEndian.AppendUint64(b, uint64(len(s)))
		b = append(b, s...)
		b = append(b, zeroPad[:padding(uint64(len(s)))]...)
	}
	return b
}

// padding returns how many zero bytes follow a string of length n so the
// next field starts 8-byte aligned.
func padding(n uint64) int {
	return int(-n & 7)
}

// Dump writes the NAR serialization of the file, directory or symlink at path to w.
// It streams: file contents are copied, never read whole into memory, so memory stays bounded
// whatever the size of the tree.
//
// Like nix-store, Dump does not follow symlinks, path itself included
// (unless it ends in a slash, which makes the kernel resolve it), and marks
// a regular file executable when its owner execute bit is set. It fails on
// sockets, fifos and devices, and on a file whose size changes while it is
// read. On error, whatever was already written to w is not a valid archive
// and must be discarded.
func Dump(w io.Writer, path string) error {
	d := dumper{
		w:   bufio.NewWriterSize(w, writeBufSize),
		buf: make([]byte, copyBufSize),
	}
	if err := d.write(tokMagic); err != nil {
		return err
	}
	if err := d.dump(path); err != nil {
		return err
	}
	if err := d.w.Flush(); err != nil {
		return fmt.Errorf("nar: write: %w", err)
	}
	return nil
}

type dumper struct {
	w   *bufio.Writer
	buf []byte
	len [8]byte
	// st is reused across entries: os.Lstat would allocate a FileInfo
	// per entry, which dominates on trees of many small files.
	st syscall.Stat_t
}

func (d *dumper) dump(path string) error {
	if err := ignoringEINTR(func() error { return syscall.Lstat(path, &d.st) }); err != nil {
		return fmt.Errorf("nar: %w", &fs.PathError{Op: "lstat", Path: path, Err: err})
	}
	switch mode := uint32(d.st.Mode); mode & syscall.S_IFMT {
	case syscall.S_IFREG:
		return d.dumpRegular(path, d.st.Size, mode&syscall.S_IXUSR != 0)
	case syscall.S_IFDIR:
		return d.dumpDir(path)
	case syscall.S_IFLNK:
		return d.dumpSymlink(path)
	default:
		// NAR has no representation for these; silently dropping them
		// would make the archive disagree with the tree it claims to be.
		return fmt.Errorf("nar: %s: unsupported file type %s", path, typeName(mode))
	}
}

func typeName(mode uint32) string {
	switch mode & syscall.S_IFMT {
	case syscall.S_IFIFO:
		return "fifo"
	case syscall.S_IFSOCK:
		return "socket"
	case syscall.S_IFCHR:
		return "character device"
	case syscall.S_IFBLK:
		return "block device"
	}
	return fmt.Sprintf("%#o", mode&syscall.S_IFMT)
}

func (d *dumper) dumpSymlink(path string) error {
	// d.buf is far larger than PATH_MAX, so a full buffer can only mean
	// the link changed under us into something no file system allows.
	n, err := syscall.Readlink(path, d.buf)
	if err != nil {
		return fmt.Errorf("nar: %w", &fs.PathError{Op: "readlink", Path: path, Err: err})
	}
	if n >= len(d.buf) {
		return fmt.Errorf("nar: %s: symlink target longer than %d bytes", path, len(d.buf))
	}
	if err := d.write(tokSymlink); err != nil {
		return err
	}
	if err := d.length(uint64(n)); err != nil {
		return err
	}
	if err := d.write(d.buf[:n]); err != nil {
		return err
	}
	if err := d.write(zeroPad[:padding(uint64(n))]); err != nil {
		return err
	}
	return d.write(tokClose)
}

func (d *dumper) dumpDir(path string) error {
	// O_NOFOLLOW|O_DIRECTORY: if the entry was swapped for a symlink or a
	// file since lstat, fail rather than archive something else.
	fd, err := openFile(path, syscall.O_DIRECTORY|syscall.O_NOFOLLOW)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), path)
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return fmt.Errorf("nar: %w", err)
	}
	// NAR order is bytewise, which is what Go string comparison does;
	// a locale-aware sort would produce a different (unhashable) archive.
	sort.Strings(names)

	if err := d.write(tokDirectory); err != nil {
		return err
	}
	for _, name := range names {
		if err := d.write(tokEntryName); err != nil {
			return err
		}
		if err := d.str(name); err != nil {
			return err
		}
		if err := d.write(tokNode); err != nil {
			return err
		}
		// Not filepath.Join: cleaning could resolve ".." lexically across
		// a symlink and name a different file than the kernel would.
		if err := d.dump(path + "/" + name); err != nil {
			return err
		}
		if err := d.write(tokClose); err != nil {
			return err
		}
	}
	return d.write(tokClose)
}

func (d *dumper) dumpRegular(path string, size int64, executable bool) error {
	if err := d.write(tokRegular); err != nil {
		return err
	}
	if executable {
		if err := d.write(tokExecutable); err != nil {
			return err
		}
	}
	if err := d.write(tokContents); err != nil {
		return err
	}
	// O_NOFOLLOW|O_NONBLOCK: if the entry was swapped since lstat, fail
	// on a symlink rather than follow it, and never block opening a fifo.
	fd, err := openFile(path, syscall.O_NOFOLLOW|syscall.O_NONBLOCK)
	if err != nil {
		return err
	}
	defer syscall.Close(fd)
	if err := d.length(uint64(size)); err != nil {
		return err
	}
	if err := d.copyContents(fd, path, size); err != nil {
		return err
	}
	if err := d.write(zeroPad[:padding(uint64(size))]); err != nil {
		return err
	}
	return d.write(tokClose)
}

// copyContents copies exactly size bytes of fd and fails if the file turns
// out shorter or longer, since the length prefix is already written.
func (d *dumper) copyContents(fd int, path string, size int64) error {
	remaining := size
	for {
		// Once the end is within reach, ask for one byte more than
		// expected: a short read then proves EOF without a further
		// syscall, and a full one proves the file grew.
		req := len(d.buf)
		if remaining < int64(req) {
			req = int(remaining) + 1
		}
		var n int
		err := ignoringEINTR(func() (err error) {
			n, err = syscall.Read(fd, d.buf[:req])
			return err
		})
		if err != nil {
			return fmt.Errorf("nar: %w", &fs.PathError{Op: "read", Path: path, Err: err})
		}
		if int64(n) > remaining {
			return fmt.Errorf("nar: %s: %s (grew past the %d bytes stat reported)", path, errSizeChanged, size)
		}
		if n == 0 {
			if remaining > 0 {
				return fmt.Errorf("nar: %s: %s (%d of %d bytes before EOF)", path, errSizeChanged, size-remaining, size)
			}
			return nil
		}
		if _, err := d.w.Write(d.buf[:n]); err != nil {
			return fmt.Errorf("nar: write: %w", err)
		}
		remaining -= int64(n)
		if remaining == 0 && n < req {
			return nil
		}
	}
}

// openFile opens path read-only with the raw syscall: os.Open costs an
// allocation and, on Linux, several fcntl and epoll_ctl calls per file to
// discover that regular files cannot be polled.
func openFile(path string, flags int) (int, error) {
	var fd int
	err := ignoringEINTR(func() (err error) {
		fd, err = syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC|flags, 0)
		return err
	})
	if err != nil {
		return -1, fmt.Errorf("nar: %w", &fs.PathError{Op: "open", Path: path, Err: err})
	}
	return fd, nil
}

// ignoringEINTR retries fn while it is interrupted by a signal, as the os
// package does; the Go runtime's own signals can otherwise surface here.
func ignoringEINTR(fn func() error) error {
	for {
		if err := fn(); err != syscall.EINTR {
			return err
		}
	}
}

func (d *dumper) write(b []byte) error {
	if _, err := d.w.Write(b); err != nil {
		return fmt.Errorf("nar: write: %w", err)
	}
	return nil
}

func (d *dumper) length(n uint64) error {
	binary.LittleEndian.PutUint64(d.len[:], n)
	return d.write(d.len[:])
}

func (d *dumper) str(s string) error {
	if err := d.length(uint64(len(s))); err != nil {
		return err
	}
	if _, err := d.w.WriteString(s); err != nil {
		return fmt.Errorf("nar: write: %w", err)
	}
	return d.write(zeroPad[:padding(uint64(len(s)))])
}
