// Package jobcontainer is the job container's side of the contract: the paths inside every job
// container that hearth makes and mounts. gitlab-runner is told about the builds and cache dirs,
// jobs rely on the store and the daemon socket, and the agent lives under /.hearth. The driver,
// the executor and the config's validation all read them here, so the container is described once.
package jobcontainer

import (
	"path"

	"github.com/hearth-ci/hearth/nix"
)

const (
	// BuildsDir holds the job's checkout, /builds/<group>/<project>: builds_dir for gitlab-runner.
	BuildsDir = "/builds"
	// CacheDir is gitlab-runner's cache_dir.
	CacheDir = "/cache"
	// StoreDir is the host's store, mounted read-only.
	StoreDir = nix.StoreDir
	// DaemonSocket is the host daemon's socket, where Nix inside the container looks for it.
	DaemonSocket = nix.DaemonSocket
	// HearthDir holds what is hearth's: the agent's binary and its socket.
	HearthDir = "/.hearth"
	// AgentBinary is the hearth binary, mounted read-only; it runs as the container's PID 1.
	AgentBinary = HearthDir + "/bin/hearth"
	// AgentDir holds the agent's socket; it is a host directory the driver reaches the agent in.
	AgentDir = HearthDir + "/run"
	// AgentSocket is the agent's socket, AgentSocketName in AgentDir.
	AgentSocket     = AgentDir + "/" + AgentSocketName
	AgentSocketName = "agent.sock"
)

// Reserved lists the container paths hearth mounts or writes itself. An environment's extra
// mounts may not cover or replace any of them.
var Reserved = []string{"/", StoreDir, path.Dir(DaemonSocket), BuildsDir, CacheDir, HearthDir,
	"/proc", "/dev", "/sys", "/tmp", "/root", "/etc/hosts", "/etc/resolv.conf", "/etc/passwd", "/etc/group"}
