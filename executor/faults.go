package executor

import (
	"fmt"
	"os"
	"syscall"

	"github.com/hearth-ci/hearth/bytesize"
	"github.com/hearth-ci/hearth/jobcontainer"
)

// A stage that failed may have failed because of the host, not the job: its builds dir's file
// system filled up, or its tier's nix-daemon went away under it. Those are said in a sentence
// that names the dir or the daemon, and count as the runner's failure, so that the runner may
// retry the job elsewhere or later.

// minFree is the free space below which a builds dir counts as full.
const minFree = 1 << 20

// daemonMark identifies a daemon's socket: a restarted daemon makes a new one.
type daemonMark struct{ ino, mtime int64 }

func markOf(socket string) (daemonMark, bool) {
	fi, err := os.Stat(socket)
	if err != nil {
		return daemonMark{}, false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return daemonMark{}, false
	}
	return daemonMark{int64(st.Ino), fi.ModTime().UnixNano()}, true
}

// hostFault says why a failed stage of the job with state st failed when the host is the cause,
// or nil.
func (e *Executor) hostFault(st state, stage string, before daemonMark, hadDaemon bool) error {
	if st.DaemonSocket != "" && hadDaemon {
		if now, ok := markOf(st.DaemonSocket); !ok || now != before {
			return fmt.Errorf("the nix-daemon at %s (the job's Nix) stopped or restarted during stage %s, so the builds the stage waited on were lost: check that daemon; the job may be retried", st.DaemonSocket, stage)
		}
	}
	if dir := st.buildsDir(); dir != "" {
		var fs syscall.Statfs_t
		if err := syscall.Statfs(dir, &fs); err == nil {
			if free := int64(fs.Bavail) * fs.Bsize; free < minFree {
				return fmt.Errorf("the file system of the job's builds dir (%s on the host, %s in the job) is full (%s free), which is likely why stage %s failed: free space there, or move [jobs] builds_root", dir, jobcontainer.BuildsDir, bytesize.Format(free), stage)
			}
		}
	}
	return nil
}
