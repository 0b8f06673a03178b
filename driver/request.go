package driver

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// A job asks for a deploy by leaving .hearth/deploy/TARGET in its project dir: a symlink to a
// store path (nix build's out-link) or a regular file holding one. The job owns that directory,
// so the driver reads it as root without trusting it: nothing on the way may be a symlink, link
// texts are read and never followed, and only regular files are opened.

// requestDir is where a job leaves its deploy requests, relative to its project dir.
const requestDir = ".hearth/deploy"

// maxRequest is the most of a request file read: a store path is far shorter.
const maxRequest = 4096

// request is one entry of the job's request dir.
type request struct {
	target, path string
	// refused says why the entry is not a request, when it is not.
	refused string
}

// projectDir is a job's project dir on the host: Repo (the repository's path, as GitLab names it)
// beneath Builds, the builds dir hearth made for the job. Everything beneath Builds is the job's.
type projectDir struct {
	Builds, Repo string
}

// open opens rel in the project dir as a directory, refusing a symlink anywhere beneath Builds.
func (p projectDir) open(rel string) (*os.File, error) {
	root, err := unix.Open(p.Builds, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: p.Builds, Err: err}
	}
	defer unix.Close(root)
	path := filepath.Join(p.Repo, rel)
	fd, err := unix.Openat2(root, path, &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV,
	})
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: filepath.Join(p.Builds, path), Err: err}
	}
	return os.NewFile(uintptr(fd), filepath.Join(p.Builds, path)), nil
}

// readRequests reads the requests in the project's request dir and removes them, so that a request
// counts for the job that made it only. No dir means no request.
func readRequests(p projectDir) ([]request, error) {
	d, err := p.open(requestDir)
	switch {
	case errors.Is(err, unix.ENOENT):
		return nil, nil
	case errors.Is(err, unix.ELOOP), errors.Is(err, unix.ENOTDIR), errors.Is(err, unix.EXDEV):
		// Remove what is there, so it is not read again; what it points at is never touched.
		clearRequests(p)
		return []request{{refused: "$CI_PROJECT_DIR/" + requestDir + " is a symlink, or is under one, or is not a directory; nothing was followed. Leave the system's out-link there with nix build --out-link " + requestDir + "/TARGET"}}, nil
	case err != nil:
		return nil, fmt.Errorf("read deploy requests: %w", err)
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("read deploy requests: %w", err)
	}
	sort.Strings(names)
	dirfd := int(d.Fd())
	var reqs []request
	for _, name := range names {
		r := request{target: name}
		r.path, r.refused = readRequest(dirfd, name)
		reqs = append(reqs, r)
		removeAt(dirfd, name)
	}
	return reqs, nil
}

// readRequest reads one entry without following it: a symlink's text, or a regular file's first
// line.
func readRequest(dirfd int, name string) (path, refused string) {
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return "", fmt.Sprintf("cannot be read: %v", err)
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFLNK:
		buf := make([]byte, maxRequest)
		n, err := unix.Readlinkat(dirfd, name, buf)
		if err != nil {
			return "", fmt.Sprintf("cannot be read: %v", err)
		}
		return string(buf[:n]), ""
	case unix.S_IFREG:
		fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		if err != nil {
			return "", fmt.Sprintf("cannot be read: %v", err)
		}
		f := os.NewFile(uintptr(fd), name)
		defer f.Close()
		// It was a regular file when looked at; it must still be one now that it is open.
		if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
			return "", "is not a regular file"
		}
		b, err := io.ReadAll(io.LimitReader(f, maxRequest))
		if err != nil {
			return "", fmt.Sprintf("cannot be read: %v", err)
		}
		line, _, _ := strings.Cut(string(b), "\n")
		return strings.TrimSpace(line), ""
	}
	return "", "is neither a symlink to a store path nor a file holding one"
}

// removeAt removes an entry of the request dir, whatever it is: a directory with what is in it,
// walked by file descriptor without following a link.
func removeAt(dirfd int, name string) {
	removeTree(dirfd, name, 0)
}

// maxDepth bounds the walk of a directory a job planted in the request dir.
const maxDepth = 16

func removeTree(dirfd int, name string, depth int) {
	err := unix.Unlinkat(dirfd, name, 0)
	if err == nil || !(errors.Is(err, unix.EISDIR) || errors.Is(err, unix.EPERM)) || depth > maxDepth {
		return
	}
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	d := os.NewFile(uintptr(fd), name)
	names, _ := d.Readdirnames(-1)
	for _, n := range names {
		removeTree(fd, n, depth+1)
	}
	d.Close()
	unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR)
}

// clearRequests removes whatever is in the request dir before the job's script runs: builds
// dirs outlive jobs, and a checkout may carry such links too. A symlink or file where a directory
// of the request dir's path should be is removed itself; nothing is followed.
func clearRequests(p projectDir) {
	rel := "."
	for _, part := range strings.Split(requestDir, "/") {
		d, err := p.open(rel)
		if err != nil {
			// No such dir, or a symlink above it that an earlier step could not remove (one
			// beneath Builds but above the project dir: the job's checkout, which get_sources
			// makes again).
			return
		}
		var st unix.Stat_t
		err = unix.Fstatat(int(d.Fd()), part, &st, unix.AT_SYMLINK_NOFOLLOW)
		if err == nil && st.Mode&unix.S_IFMT != unix.S_IFDIR {
			unix.Unlinkat(int(d.Fd()), part, 0)
			err = unix.ENOENT
		}
		d.Close()
		if err != nil {
			return
		}
		rel = filepath.Join(rel, part)
	}
	d, err := p.open(requestDir)
	if err != nil {
		return
	}
	defer d.Close()
	names, _ := d.Readdirnames(-1)
	for _, n := range names {
		removeAt(int(d.Fd()), n)
	}
}
