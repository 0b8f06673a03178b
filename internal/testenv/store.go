package testenv

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// nixCommands are the names under which Nix's one binary behaves as each command.
var nixCommands = []string{"nix", "nix-build", "nix-store", "nix-instantiate", "nix-env", "nix-hash", "nix-shell", "nix-copy-closure", "nix-collect-garbage"}

// makeStorePaths adds the tools and the environment to the store. Nix and git from Debian are
// linked against /usr/lib; the tools path carries those libraries and the dynamic loader, and the
// environment's nix and git commands run the binaries through that loader, so nothing outside
// /nix/store is needed.
func (e *Parts) makeStorePaths() error {
	tools := filepath.Join(e.Dir, "build", "hearth-test-tools")
	for _, d := range []string{"bin", "lib", "libexec/git-core"} {
		if err := os.MkdirAll(filepath.Join(tools, d), 0o755); err != nil {
			return err
		}
	}
	if err := copyFile("/bin/busybox", filepath.Join(tools, "bin", "busybox")); err != nil {
		return err
	}
	applets, err := exec.Command("/bin/busybox", "--list").Output()
	if err != nil {
		return fmt.Errorf("busybox --list: %w", err)
	}
	for _, a := range strings.Fields(string(applets)) {
		if a == "busybox" || a == "bash" || a == "sh" {
			continue
		}
		if err := os.Symlink("busybox", filepath.Join(tools, "bin", a)); err != nil {
			return err
		}
	}
	if err := copyFile("/bin/bash-static", filepath.Join(tools, "bin", "bash")); err != nil {
		return err
	}
	if err := os.Symlink("bash", filepath.Join(tools, "bin", "sh")); err != nil {
		return err
	}
	nixBin, err := exec.LookPath("nix")
	if err != nil {
		return err
	}
	nixBin, _ = filepath.EvalSymlinks(nixBin)
	if err := copyFile(nixBin, filepath.Join(tools, "libexec", "nix")); err != nil {
		return err
	}
	libs, err := sharedLibraries(nixBin)
	if err != nil {
		return err
	}
	gitLibs, err := addGit(tools)
	if err != nil {
		return err
	}
	libs = append(libs, gitLibs...)
	// Nix loads the DNS resolver module itself, by name, and warns on every command without it.
	for _, nss := range []string{"libnss_dns.so.2", "libnss_files.so.2"} {
		if p, err := filepath.Glob("/lib/*-linux-gnu/" + nss); err == nil && len(p) > 0 {
			libs = append(libs, p[0])
		}
	}
	for _, l := range libs {
		if err := copyFile(l, filepath.Join(tools, "lib", filepath.Base(l))); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
	}
	if e.Tools, err = e.Nix("nix-store", "--add", tools); err != nil {
		return err
	}

	envDir := filepath.Join(e.Dir, "build", "hearth-test-env")
	if err := os.MkdirAll(filepath.Join(envDir, "bin"), 0o755); err != nil {
		return err
	}
	ents, err := os.ReadDir(filepath.Join(e.Tools, "bin"))
	if err != nil {
		return err
	}
	for _, ent := range ents {
		if err := os.Symlink(filepath.Join(e.Tools, "bin", ent.Name()), filepath.Join(envDir, "bin", ent.Name())); err != nil {
			return err
		}
	}
	for _, name := range nixCommands {
		w := fmt.Sprintf("#!%[1]s/bin/bash\nexec %[1]s/lib/ld-linux-x86-64.so.2 --library-path %[1]s/lib --argv0 %[2]s %[1]s/libexec/nix \"$@\"\n", e.Tools, name)
		if err := os.WriteFile(filepath.Join(envDir, "bin", name), []byte(w), 0o755); err != nil {
			return err
		}
	}
	// Certificates where nixpkgs' cacert puts them, as the flake's ci-env has them.
	if err := os.MkdirAll(filepath.Join(envDir, "etc", "ssl", "certs"), 0o755); err != nil {
		return err
	}
	if err := copyFile("/etc/ssl/certs/ca-certificates.crt", filepath.Join(envDir, "etc", "ssl", "certs", "ca-bundle.crt")); err != nil {
		return fmt.Errorf("the job environment's certificates: %w (apt-get install ca-certificates)", err)
	}
	if err := os.Symlink("ca-bundle.crt", filepath.Join(envDir, "etc", "ssl", "certs", "ca-certificates.crt")); err != nil {
		return err
	}
	git := fmt.Sprintf("#!%[1]s/bin/bash\nexport GIT_EXEC_PATH=%[1]s/libexec/git-core\nexec %[1]s/libexec/git-core/git \"$@\"\n", e.Tools)
	if err := os.WriteFile(filepath.Join(envDir, "bin", "git"), []byte(git), 0o755); err != nil {
		return err
	}
	src, err := e.Nix("nix-store", "--add", envDir)
	if err != nil {
		return err
	}
	// nix-store --add records no references; a copy built by the daemon has them (the tools path),
	// as an environment built with Nix has, so that its closure can be copied into a tier's store.
	e.Environment, err = e.Nix("nix-build", "--no-out-link", "-E", fmt.Sprintf(
		`derivation { name = "hearth-test-env"; system = builtins.currentSystem; builder = "${builtins.storePath %q}/bin/cp"; args = ["-a" (builtins.storePath %q) (builtins.placeholder "out")]; }`,
		e.Tools, src))
	return err
}

// gitCommands are the programs git runs from its exec path to fetch from a local repository.
var gitCommands = []string{"git", "git-upload-pack", "git-receive-pack", "git-upload-archive"}

// addGit puts Debian's git under tools/libexec and, in its exec path, a wrapper per command that
// runs it through the dynamic loader tools/lib will hold; the wrappers find the tools path from
// where they are, since a store path cannot name itself. It returns the libraries git needs.
func addGit(tools string) ([]string, error) {
	bin, err := exec.LookPath("git")
	if err != nil {
		return nil, err
	}
	bin, _ = filepath.EvalSymlinks(bin)
	if err := copyFile(bin, filepath.Join(tools, "libexec", "git-bin")); err != nil {
		return nil, err
	}
	for _, name := range gitCommands {
		w := fmt.Sprintf("#!/bin/sh\nd=${0%%/*}/../..\nexec \"$d/lib/ld-linux-x86-64.so.2\" --library-path \"$d/lib\" --argv0 %s \"$d/libexec/git-bin\" \"$@\"\n", name)
		if err := os.WriteFile(filepath.Join(tools, "libexec", "git-core", name), []byte(w), 0o755); err != nil {
			return nil, err
		}
	}
	return sharedLibraries(bin)
}

// sharedLibraries lists the files ldd resolves for bin, the dynamic loader included.
func sharedLibraries(bin string) ([]string, error) {
	out, err := exec.Command("ldd", bin).Output()
	if err != nil {
		return nil, fmt.Errorf("ldd %s: %w", bin, err)
	}
	var libs []string
	for _, line := range strings.Split(string(out), "\n") {
		for _, f := range strings.Fields(line) {
			if strings.HasPrefix(f, "/") {
				libs = append(libs, f)
			}
		}
	}
	if len(libs) == 0 {
		return nil, fmt.Errorf("ldd found no libraries for %s", bin)
	}
	return libs, nil
}

// copyFile copies src to dst, which must not exist yet.
func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	fi, err := os.Stat(src)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, fi.Mode().Perm()|0o200)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
