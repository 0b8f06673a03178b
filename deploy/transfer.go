package deploy

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/hearth-ci/hearth/bytesize"
	"github.com/hearth-ci/hearth/nix"
	"github.com/hearth-ci/hearth/nix/nar"
	"github.com/hearth-ci/hearth/nixstore"
)

// missing returns the paths of infos the target does not have.
func (s *session) missing(ctx context.Context, infos []nixstore.PathInfo) ([]nixstore.PathInfo, error) {
	var list strings.Builder
	for _, in := range infos {
		list.WriteString(in.Path + "\n")
	}
	out, err := s.c.output(ctx, s.w.command("missing"), strings.NewReader(list.String()))
	if err != nil {
		return nil, fmt.Errorf("ask %s which paths it lacks: %w", s.name, err)
	}
	lacks := map[string]bool{}
	for _, p := range strings.Fields(out) {
		lacks[p] = true
	}
	var todo []nixstore.PathInfo
	for _, in := range infos {
		if lacks[in.Path] {
			todo = append(todo, in)
		}
	}
	return todo, nil
}

func narBytes(infos []nixstore.PathInfo) int64 {
	var n int64
	for _, in := range infos {
		n += int64(in.NarSize)
	}
	return n
}

// transfer makes the closure valid on the target: pulled from the target's substituters when the
// target is set to pull, and whatever is still missing then sent over the SSH connection.
func (s *session) transfer(ctx context.Context, closure []nixstore.PathInfo) error {
	if s.t.Transfer != "pull" {
		todo, err := s.missing(ctx, closure)
		if err != nil {
			return err
		}
		if len(todo) == 0 {
			s.log("all %d paths of the closure are already on %s", len(closure), s.name)
			return nil
		}
		return s.send(ctx, todo)
	}
	var list strings.Builder
	for _, in := range closure {
		list.WriteString(in.Path + "\n")
	}
	start := time.Now()
	out, err := s.c.output(ctx, s.w.command("realise", s.path, strings.Join(s.t.Substituters, " "), strings.Join(s.t.TrustedPublicKeys, " ")), strings.NewReader(list.String()))
	if err != nil {
		return fmt.Errorf("pull on %s: %w", s.name, err)
	}
	missing, still, why := parseRealise(out)
	if len(missing) == 0 {
		s.log("all %d paths of the closure are already on %s", len(closure), s.name)
		return nil
	}
	var pulled, left []nixstore.PathInfo
	for _, in := range closure {
		switch {
		case still[in.Path]:
			left = append(left, in)
		case missing[in.Path]:
			pulled = append(pulled, in)
		}
	}
	if len(pulled) > 0 {
		took := time.Since(start)
		s.log("pulled %d paths (%s) from the target's substituters in %s (%s)", len(pulled), bytesize.Format(narBytes(pulled)),
			took.Round(time.Millisecond), bytesize.Rate(narBytes(pulled), took))
	}
	if len(left) == 0 {
		return nil
	}
	if why == "" {
		why = "it found no substitute"
	}
	s.log("%s could not pull %d paths (%s): sending them over SSH", s.name, len(left), why)
	return s.send(ctx, left)
}

// parseRealise reads what the realise command printed: the paths missing before the pull, those
// still missing after it, and the last thing Nix said.
func parseRealise(out string) (missing, still map[string]bool, why string) {
	missing, still = map[string]bool{}, map[string]bool{}
	var into map[string]bool
	for _, line := range strings.Split(out, "\n") {
		switch {
		case line == "missing:":
			into = missing
		case line == "still-missing:":
			into = still
		case strings.HasPrefix(line, "nix: "):
			if l := strings.TrimSpace(strings.TrimPrefix(line, "nix: ")); l != "" {
				why = firstLine(l)
			}
		case into != nil && strings.HasPrefix(line, nix.StoreDir+"/"):
			into[strings.TrimSpace(line)] = true
		}
	}
	return missing, still, why
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if l := strings.TrimSpace(lines[i]); l != "" {
			return firstLine(l)
		}
	}
	return ""
}

// send streams paths to the target's nix-store --import over the connection: NARs made here, in
// the export format, every path after those it references.
func (s *session) send(ctx context.Context, todo []nixstore.PathInfo) error {
	start := time.Now()
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(writeExport(pw, nixstore.Order(todo))) }()
	out, err := s.c.output(ctx, s.w.command("import"), pr)
	pr.CloseWithError(io.ErrClosedPipe)
	if err != nil {
		return fmt.Errorf("send %d paths to %s: %w", len(todo), s.name, err)
	}
	imported := len(strings.Fields(out))
	took := time.Since(start)
	s.log("sent %d paths (%s) over SSH in %s (%s)", imported, bytesize.Format(narBytes(todo)), took.Round(time.Millisecond), bytesize.Rate(narBytes(todo), took))
	return nil
}

// exportMagic follows each NAR in nix-store --export's format.
const exportMagic = 0x4558494e

// writeExport writes paths as nix-store --export does: for each, 1, its NAR, the magic, its path,
// references and deriver, and 0 for "no signature"; then 0.
func writeExport(w io.Writer, paths []nixstore.PathInfo) error {
	bw := bufio.NewWriterSize(w, 1<<20)
	for _, in := range paths {
		writeInt(bw, 1)
		if err := nar.Dump(bw, in.Path); err != nil {
			return fmt.Errorf("export %s: %w", in.Path, err)
		}
		writeInt(bw, exportMagic)
		writeString(bw, in.Path)
		refs := append([]string{}, in.References...)
		sort.Strings(refs)
		writeInt(bw, uint64(len(refs)))
		for _, r := range refs {
			writeString(bw, r)
		}
		writeString(bw, in.Deriver)
		writeInt(bw, 0)
	}
	writeInt(bw, 0)
	return bw.Flush()
}

func writeInt(w *bufio.Writer, n uint64) {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], n)
	w.Write(b[:])
}

func writeString(w *bufio.Writer, s string) {
	writeInt(w, uint64(len(s)))
	w.WriteString(s)
	if pad := (8 - len(s)%8) % 8; pad > 0 {
		w.Write(make([]byte, pad))
	}
}
