package sshtarget

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// needTargets skips the test, saying why, where SSH targets cannot run: under -short, without
// root, or without the base tarball.
func needTargets(t *testing.T) {
	t.Helper()
	if testing.Short() {
		fmt.Println("SKIPPED (-short): the SSH target tests (systemd-nspawn hosts) did not run")
		t.Skip("-short: the SSH targets are real parts")
	}
	if err := Available(); err != nil {
		fmt.Printf("SKIPPED: the SSH target tests did not run: %v\n", err)
		t.Skipf("SKIPPED: %v", err)
	}
}

// startFleet starts a fleet whose Stop runs at the end of the test, and prints the targets'
// consoles if the test failed.
func startFleet(t *testing.T, n int) (*Fleet, time.Duration) {
	t.Helper()
	dir, err := os.MkdirTemp("", "sshtarget-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	start := time.Now()
	f, err := StartFleet(dir, n)
	took := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, tg := range f.Targets() {
				t.Logf("--- console of %s (%s):\n%s", tg.Name, tg.Addr, tail(tg.Log(), 60))
			}
		}
		if err := f.Stop(); err != nil {
			t.Errorf("Stop: %v", err)
		}
	})
	return f, took
}

func run(t *testing.T, tg *Target, cmd string) string {
	t.Helper()
	out, err := tg.Run(cmd)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(out)
}

func TestFleet(t *testing.T) {
	needTargets(t)
	f, took := startFleet(t, 2)
	t.Logf("2 targets accepted a login %s after StartFleet", took.Round(time.Millisecond))
	ts := f.Targets()
	if len(ts) != 2 || ts[0].Addr == ts[1].Addr || ts[0].Netns == ts[1].Netns {
		t.Fatalf("targets: %+v", ts)
	}
	fi, err := os.Stat(f.Identity)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("identity %s: %v %v", f.Identity, fi, err)
	}

	t.Run("systemd", func(t *testing.T) {
		for _, tg := range ts {
			state, err := tg.Run("systemctl is-system-running --wait")
			state = strings.TrimSpace(state)
			if state != "running" {
				failed, _ := tg.Run("systemctl --failed --no-legend; journalctl -b -p warning --no-pager | tail -n 30")
				t.Errorf("%s: systemctl is-system-running: %q (%v); failed units and warnings:\n%s", tg.Name, state, err, failed)
			}
			if got := run(t, tg, "hostname"); got != tg.Name {
				t.Errorf("hostname %q, want %q", got, tg.Name)
			}
			if got := run(t, tg, "cat /proc/1/comm"); got != "systemd" {
				t.Errorf("PID 1 is %q", got)
			}
		}
		if a, b := run(t, ts[0], "cat /etc/machine-id"), run(t, ts[1], "cat /etc/machine-id"); a == b || len(a) != 32 {
			t.Errorf("machine-ids %q and %q", a, b)
		}
	})

	t.Run("deploy user", func(t *testing.T) {
		for _, tg := range ts {
			out, err := tg.RunAs("deploy", "id -un; echo $HOME; echo $SHELL")
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.Fields(out); len(got) != 3 || got[0] != "deploy" || got[1] != "/home/deploy" || got[2] != "/bin/sh" {
				t.Errorf("as deploy: %q", out)
			}
		}
	})

	t.Run("systemd-run outlives the SSH client", func(t *testing.T) {
		tg := ts[0]
		// With OpenSSH's client, the key file and known_hosts as a deploy tool uses them.
		ssh := func(args ...string) *exec.Cmd {
			return exec.Command("/usr/bin/ssh", append(append(tg.SSHOptions(), "root@"+tg.Addr), args...)...)
		}
		if out, err := ssh("systemd-run --unit=x --service-type=exec sleep 30").CombinedOutput(); err != nil {
			t.Fatalf("systemd-run: %v: %s", err, out)
		}
		// A client killed while it waits for its unit.
		waiting := ssh("systemd-run --unit=y --service-type=exec --wait --pipe sleep 30")
		if err := waiting.Start(); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			if out, _ := tg.Run("systemctl is-active y"); strings.TrimSpace(out) == "active" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("unit y never became active")
			}
			time.Sleep(50 * time.Millisecond)
		}
		waiting.Process.Kill()
		waiting.Wait()
		// Every logind session of those clients ends (the killed one's stays "closing" while its
		// systemd-run --wait lives on); the units stay.
		deadline = time.Now().Add(10 * time.Second)
		for {
			out, _ := tg.Run(`for s in $(loginctl list-sessions --no-legend | awk '{print $1}'); do loginctl show-session "$s" -p State --value; done | grep -vc closing`)
			if strings.TrimSpace(out) == "1" { // this one
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("sessions not closing: %s", out)
			}
			time.Sleep(100 * time.Millisecond)
		}
		for _, u := range []string{"x", "y"} {
			if got, _ := tg.Run("systemctl is-active " + u); strings.TrimSpace(got) != "active" {
				t.Errorf("unit %s is %q after its client went", u, strings.TrimSpace(got))
			}
		}
		if got := run(t, tg, "systemctl show -p ControlGroup --value x"); got != "/system.slice/x.service" {
			t.Errorf("unit x in cgroup %q", got)
		}
	})

	t.Run("own nix store", func(t *testing.T) {
		for _, tg := range ts {
			if v := run(t, tg, "nix-store --version"); !strings.HasPrefix(v, "nix-store (Nix) 2.8") {
				t.Errorf("%s: nix-store --version: %q", tg.Name, v)
			}
		}
		probe := fmt.Sprintf("/nix/store/sshtarget-probe-%d", time.Now().UnixNano())
		run(t, ts[0], "echo here >"+probe)
		if got := run(t, ts[0], "cat "+probe); got != "here" {
			t.Fatalf("probe: %q", got)
		}
		if out, err := ts[1].Run("test ! -e " + probe); err != nil {
			t.Errorf("%s sees %s of %s: %s %v", ts[1].Name, probe, ts[0].Name, out, err)
		}
		if _, err := os.Stat(probe); !os.IsNotExist(err) {
			t.Errorf("the host sees %s: %v", probe, err)
		}
		// A store path written on the target, and the store's database, work.
		path := run(t, ts[0], "echo hi >/tmp/hi && nix-store --add /tmp/hi")
		if run(t, ts[0], "nix-store --check-validity "+path+" && echo valid") != "valid" {
			t.Errorf("%s not valid", path)
		}
	})

	t.Run("host key", func(t *testing.T) {
		for i, tg := range ts {
			cb, err := knownhosts.New(tg.KnownHosts)
			if err != nil {
				t.Fatal(err)
			}
			data, _ := os.ReadFile(tg.KnownHosts)
			if strings.TrimSpace(string(data)) != tg.HostKeyLine || !strings.HasPrefix(tg.HostKeyLine, tg.Addr+" ssh-ed25519 AAAA") {
				t.Errorf("known_hosts %q, HostKeyLine %q", data, tg.HostKeyLine)
			}
			signer, err := ssh.ParsePrivateKey(mustRead(t, f.Identity))
			if err != nil {
				t.Fatal(err)
			}
			dial := func(cb ssh.HostKeyCallback) error {
				c, err := ssh.Dial("tcp", net.JoinHostPort(tg.Addr, "22"), &ssh.ClientConfig{
					User: "root", Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)},
					HostKeyCallback: cb, HostKeyAlgorithms: []string{ssh.KeyAlgoED25519}, Timeout: 5 * time.Second,
				})
				if err == nil {
					c.Close()
				}
				return err
			}
			if err := dial(cb); err != nil {
				t.Errorf("%s: %v", tg.Name, err)
			}
			// The other target's key, for this address, is refused: the check is real.
			other := ts[1-i]
			wrong := filepath.Join(t.TempDir(), "known_hosts")
			line := tg.Addr + " " + strings.SplitN(other.HostKeyLine, " ", 2)[1]
			os.WriteFile(wrong, []byte(line+"\n"), 0o644)
			cb, _ = knownhosts.New(wrong)
			var keyErr *knownhosts.KeyError
			if err := dial(cb); !errors.As(err, &keyErr) || len(keyErr.Want) == 0 {
				t.Errorf("%s with %s's key: %v, want a key mismatch", tg.Name, other.Name, err)
			}
		}
	})

	t.Run("cut network", func(t *testing.T) {
		tg := ts[1]
		if err := tg.CutNetwork(); err != nil {
			t.Fatal(err)
		}
		c, err := net.DialTimeout("tcp", net.JoinHostPort(tg.Addr, "22"), time.Second)
		var ne net.Error
		if err == nil {
			c.Close()
			t.Error("dialed a cut target")
		} else if !errors.As(err, &ne) || !ne.Timeout() {
			t.Errorf("dial of a cut target: %v, want a timeout", err)
		}
		if err := tg.RestoreNetwork(); err != nil {
			t.Fatal(err)
		}
		if got := run(t, tg, "echo back"); got != "back" {
			t.Errorf("after RestoreNetwork: %q", got)
		}
	})

	t.Run("write file", func(t *testing.T) {
		tg := ts[0]
		if err := tg.WriteFile("/etc/sudoers.d/deploy", []byte("deploy ALL=(root) NOPASSWD: ALL\n"), 0o440); err != nil {
			t.Fatal(err)
		}
		if got := run(t, tg, "stat -c '%a %U' /etc/sudoers.d/deploy"); got != "440 root" {
			t.Errorf("stat: %q", got)
		}
		out, err := tg.RunAs("deploy", "sudo -n id -un")
		if err != nil || strings.TrimSpace(out) != "root" {
			t.Errorf("sudo as deploy: %q %v", out, err)
		}
	})

	t.Run("reboot", func(t *testing.T) {
		tg := ts[1]
		before := run(t, tg, "cat /proc/sys/kernel/random/boot_id")
		start := time.Now()
		if err := tg.Reboot(); err != nil {
			t.Fatal(err)
		}
		t.Logf("reboot to login: %s", time.Since(start).Round(time.Millisecond))
		if after := run(t, tg, "cat /proc/sys/kernel/random/boot_id"); after == before {
			t.Error("same boot id after Reboot")
		}
		if got := run(t, tg, "hostname"); got != tg.Name {
			t.Errorf("hostname %q after reboot", got)
		}
	})

	t.Run("stop leaves nothing", func(t *testing.T) {
		start := time.Now()
		if err := f.Stop(); err != nil {
			t.Fatal(err)
		}
		t.Logf("Stop of 2 targets: %s", time.Since(start).Round(time.Millisecond))
		if err := f.Stop(); err != nil {
			t.Errorf("second Stop: %v", err)
		}
		checkNothingLeft(t, f)
	})
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// checkNothingLeft checks that a stopped fleet left no directory, network namespace, veth,
// cgroup, mount (in any mount namespace) or process.
func checkNothingLeft(t *testing.T, f *Fleet) {
	t.Helper()
	if _, err := os.Stat(f.Dir); !os.IsNotExist(err) {
		t.Errorf("%s is still there: %v", f.Dir, err)
	}
	links, _ := exec.Command("ip", "-o", "link").Output()
	for _, tg := range f.Targets() {
		if _, err := os.Stat("/run/netns/" + tg.Netns); !os.IsNotExist(err) {
			t.Errorf("network namespace %s is still there", tg.Netns)
		}
		for _, l := range strings.Split(string(links), "\n") {
			if strings.Contains(l, " "+tg.Veth+"@") || strings.Contains(l, " "+tg.Veth+":") {
				t.Errorf("veth left: %s", l)
			}
		}
		if d := tg.cgroupDirs(); len(d) > 0 {
			t.Errorf("cgroups left: %v", d)
		}
	}
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		for _, file := range []string{"mountinfo", "cmdline", "cgroup"} {
			data, err := os.ReadFile(filepath.Join(p, file))
			if err != nil {
				continue
			}
			s := strings.ReplaceAll(string(data), "\x00", " ")
			if strings.Contains(s, f.Dir) {
				t.Errorf("%s/%s still names %s: %.300s", p, file, f.Dir, s)
			}
			for _, tg := range f.Targets() {
				if file == "cgroup" && (strings.Contains(s, "/"+tg.cgroup+"\n") || strings.Contains(s, "/"+tg.cgroup+"/")) {
					status, _ := os.ReadFile(filepath.Join(p, "status"))
					t.Errorf("%s is still in cgroup %s:\n%s\n%.400s", p, tg.cgroup, s, status)
				}
			}
		}
	}
}

// TestTwoFleets starts two fleets at once: they claim different subnets and both work.
func TestTwoFleets(t *testing.T) {
	needTargets(t)
	type result struct {
		f   *Fleet
		err error
	}
	dir := t.TempDir()
	results := make(chan result, 2)
	for i := range 2 {
		go func() {
			f, err := StartFleet(filepath.Join(dir, fmt.Sprint(i)), 1)
			results <- result{f, err}
		}()
	}
	var fleets []*Fleet
	for range 2 {
		r := <-results
		if r.err != nil {
			t.Error(r.err)
			continue
		}
		fleets = append(fleets, r.f)
		t.Cleanup(func() { r.f.Stop() })
	}
	if t.Failed() {
		return
	}
	a, b := fleets[0].Targets()[0], fleets[1].Targets()[0]
	if a.Addr == b.Addr {
		t.Fatalf("both fleets have %s", a.Addr)
	}
	// Each reaches its host end and not the other fleet's target.
	out, err := a.Run(fmt.Sprintf("timeout 2 bash -c 'echo >/dev/tcp/%s/22' 2>&1 && echo reached || echo unreachable", b.Addr))
	if err != nil || strings.TrimSpace(out) != "unreachable" {
		t.Errorf("%s to %s: %q %v", a.Addr, b.Addr, out, err)
	}
	for _, f := range fleets {
		if err := f.Stop(); err != nil {
			t.Error(err)
		}
		checkNothingLeft(t, f)
	}
}

// TestBootTimes measures boot to login for fleets of 1 and of 4.
func TestBootTimes(t *testing.T) {
	needTargets(t)
	for _, n := range []int{1, 4} {
		f, took := startFleet(t, n)
		t.Logf("%d target(s): StartFleet to every login %s", n, took.Round(time.Millisecond))
		start := time.Now()
		if err := f.Stop(); err != nil {
			t.Fatal(err)
		}
		t.Logf("%d target(s): Stop %s", n, time.Since(start).Round(time.Millisecond))
		checkNothingLeft(t, f)
	}
}

// TestStopKills stops a fleet that does not power off in time: SIGKILL, and then whatever is left
// in the targets' cgroups, leaving nothing behind either.
func TestStopKills(t *testing.T) {
	needTargets(t)
	f, _ := startFleet(t, 1)
	run(t, f.Targets()[0], "systemd-run --unit=stubborn --service-type=exec sleep 300")
	old := StopTimeout
	StopTimeout = time.Nanosecond
	defer func() { StopTimeout = old }()
	if err := f.Stop(); err != nil {
		t.Fatal(err)
	}
	checkNothingLeft(t, f)
}
