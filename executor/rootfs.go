package executor

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/hearth-ci/hearth/config"
	"github.com/hearth-ci/hearth/jobcontainer"
)

// skeletonVersion changes whenever the skeleton's layout does, so old skeletons are not reused.
const skeletonVersion = "3"

// skeleton returns the read-only root directory for a store-path environment, making it the first
// time. It holds nothing but mount points and a few files: everything a job runs comes from the
// store. Every mount point exists beforehand because runc cannot create them inside a root owned
// by host root once it is in the user namespace, and must not write into a shared root anyway.
func (e *Executor) skeleton(env Environment) (string, error) {
	rel := func(p string) string { return strings.TrimPrefix(p, "/") }
	dirs := []string{"proc", "dev", "sys", "run", "tmp", "root", "etc", "bin", "usr/bin", "var/tmp",
		rel(jobcontainer.StoreDir), rel(path.Dir(jobcontainer.DaemonSocket)), rel(path.Dir(jobcontainer.AgentBinary)), rel(jobcontainer.AgentDir),
		rel(jobcontainer.BuildsDir), rel(jobcontainer.CacheDir)}
	files := map[string]string{
		rel(jobcontainer.DaemonSocket): "",
		rel(jobcontainer.AgentBinary):  "",
		"etc/hosts":                    "127.0.0.1 localhost\n::1 localhost\n",
		"etc/resolv.conf":              "",
		"etc/passwd":                   "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
		"etc/group":                    "root:x:0:\nnogroup:x:65534:\n",
	}
	links := map[string]string{
		"bin/sh":      env.StorePath + "/bin/sh",
		"bin/bash":    env.StorePath + "/bin/bash",
		"usr/bin/env": env.StorePath + "/bin/env",
	}
	var mountKeys []string
	for _, m := range env.Mounts {
		target := rel(m.Container)
		fi, err := os.Stat(m.Host)
		if err != nil {
			return "", fmt.Errorf("environment %s: mount %s:%s: %w", env.Name, m.Host, m.Container, err)
		}
		if fi.IsDir() {
			dirs = append(dirs, target)
			mountKeys = append(mountKeys, "d:"+target)
		} else {
			dirs = append(dirs, filepath.Dir(target))
			files[target] = ""
			mountKeys = append(mountKeys, "f:"+target)
		}
	}
	// The environment's certificates at the path TLS clients look at (nixpkgs' cacert has
	// etc/ssl/certs/ca-bundle.crt and ca-certificates.crt), unless a mount puts its own there.
	if fi, err := os.Stat(filepath.Join(env.StorePath, "etc", "ssl")); err == nil && fi.IsDir() && !mountsUnder(env.Mounts, "/etc/ssl") {
		links["etc/ssl"] = env.StorePath + "/etc/ssl"
	}
	sort.Strings(mountKeys)
	h := sha256.Sum256([]byte(skeletonVersion + "\x00" + env.StorePath + "\x00" + strings.Join(mountKeys, "\x00")))
	root := filepath.Join(e.cfg.Jobs.StateDir, "rootfs", hex.EncodeToString(h[:8]))
	if _, err := os.Stat(root); err == nil {
		return root, nil
	}
	if err := os.MkdirAll(filepath.Dir(root), 0o755); err != nil {
		return "", fmt.Errorf("make rootfs dir: %w", err)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(root), ".tmp-")
	if err != nil {
		return "", fmt.Errorf("make rootfs: %w", err)
	}
	defer os.RemoveAll(tmp)
	if err := os.Chmod(tmp, 0o755); err != nil {
		return "", err
	}
	for _, d := range dirs {
		if err := os.MkdirAll(filepath.Join(tmp, d), 0o755); err != nil {
			return "", fmt.Errorf("make rootfs: %w", err)
		}
	}
	for _, mode := range []struct {
		dir  string
		perm os.FileMode
	}{{"tmp", os.ModeSticky | 0o777}, {"var/tmp", os.ModeSticky | 0o777}, {"root", 0o700}} {
		if err := os.Chmod(filepath.Join(tmp, mode.dir), mode.perm); err != nil {
			return "", err
		}
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(tmp, name), []byte(content), 0o644); err != nil {
			return "", fmt.Errorf("make rootfs: %w", err)
		}
	}
	for name, target := range links {
		if err := os.Symlink(target, filepath.Join(tmp, name)); err != nil {
			return "", fmt.Errorf("make rootfs: %w", err)
		}
	}
	// Another prepare may have won the race; its skeleton is identical.
	if err := os.Rename(tmp, root); err != nil {
		if _, serr := os.Stat(root); serr == nil {
			return root, nil
		}
		return "", fmt.Errorf("make rootfs: %w", err)
	}
	return root, nil
}

// mountsUnder says whether one of mounts puts something at dir or below it in the container.
func mountsUnder(mounts []config.Mount, dir string) bool {
	for _, m := range mounts {
		if c := path.Clean(m.Container); c == dir || strings.HasPrefix(c, dir+"/") {
			return true
		}
	}
	return false
}
