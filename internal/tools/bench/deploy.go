package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/hearth-ci/hearth/internal/testenv"
	"github.com/hearth-ci/hearth/internal/testenv/sshtarget"
)

// benchDeploy runs the deploy benchmarks on four SSH targets: deploying one new system to four
// targets against deploying one to one target; a no-op deploy; and, for a closure over 200 MiB, the
// target pulling it from the cache and hearth sending it over SSH, against nix copy --to ssh://.
func benchDeploy(parts *testenv.Parts, runs, bigRuns int) error {
	if err := sshtarget.Available(); err != nil {
		return err
	}
	fleet, err := sshtarget.StartFleet(filepath.Join(parts.Dir, "fleet"), 4)
	if err != nil {
		return err
	}
	defer fleet.Stop()
	cache, err := testenv.ServeCache(fleet, filepath.Join(parts.Dir, "deploy"))
	if err != nil {
		return err
	}
	defer cache.Close()
	config := func(transfer string) (string, error) {
		tables := fmt.Sprintf("\n[deploy]\ngc_roots_dir = %q\n", filepath.Join(parts.Dir, "gcroots")) +
			cache.Tables(fleet, `["1"]`, func(string) string { return fmt.Sprintf("transfer = %q", transfer) })
		return parts.WriteConfig("", "", tables)
	}
	pull, err := config("pull")
	if err != nil {
		return err
	}
	push, err := config("push")
	if err != nil {
		return err
	}
	// Of the last command: hearth's own CPU time, and the whole machine's (the targets' included).
	var cpu, machine time.Duration
	hearth := func(cfg string, args ...string) (time.Duration, string, error) {
		cmd := exec.Command(parts.Hearth, append([]string{"--config", cfg}, args...)...)
		cmd.Env = append(os.Environ(), parts.NixEnv()...)
		busy := busyCPU()
		start := time.Now()
		out, err := cmd.CombinedOutput()
		if err != nil {
			return 0, string(out), fmt.Errorf("hearth %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		took := time.Since(start)
		cpu, machine = cmd.ProcessState.UserTime()+cmd.ProcessState.SystemTime(), busyCPU()-busy
		return took, string(out), nil
	}
	// A new system, in the cache: what a job leaves for its deploy.
	stamp := time.Now().UnixNano()
	n := 0
	system := func(with ...string) (string, error) {
		n++
		sys, err := parts.BuildSystem(fmt.Sprintf("bench-%d-%d", stamp, n), "ok", with...)
		if err != nil {
			return "", err
		}
		_, _, err = hearth(pull, "cache", "push", sys)
		return sys, err
	}
	all := func(sys string) []string {
		var args []string
		for _, t := range fleet.Targets() {
			args = append(args, t.Name+"="+sys)
		}
		return args
	}
	base, err := system()
	if err != nil {
		return err
	}
	if _, _, err := hearth(pull, append([]string{"deploy"}, all(base)...)...); err != nil {
		return err
	}

	// 1. One target against four, interleaved, a new system each time.
	var ones, fours, noops, oneCPU, fourCPU, oneMachine, fourMachine []time.Duration
	for i := 0; i < runs; i++ {
		sys, err := system()
		if err != nil {
			return err
		}
		d, _, err := hearth(pull, "deploy", "t1="+sys)
		if err != nil {
			return err
		}
		ones, oneCPU, oneMachine = append(ones, d), append(oneCPU, cpu), append(oneMachine, machine)
		if d, _, err = hearth(pull, "deploy", "t1="+sys); err != nil {
			return err
		}
		noops = append(noops, d)
		if sys, err = system(); err != nil {
			return err
		}
		if d, _, err = hearth(pull, append([]string{"deploy"}, all(sys)...)...); err != nil {
			return err
		}
		fours, fourCPU, fourMachine = append(fours, d), append(fourCPU, cpu), append(fourMachine, machine)
	}
	one, four := median(ones), median(fours)
	fmt.Printf("\nDeploy a new system (pulled from the cache, activated, confirmed over a new connection), with\n`hearth deploy`, to 4 targets against 1 target (%d runs, interleaved):\n", runs)
	fmt.Printf("  1 target                              %s\n", ms(one))
	fmt.Printf("  4 targets                             %s\n", ms(four))
	fmt.Printf("  ratio                                 %.2f   (target <= 1.3)\n", float64(four)/float64(one))
	fmt.Printf("  CPU time, hearth's own: 1 target %s, 4 targets %s; the whole machine's, the targets' sshd, Nix\n", ms(median(oneCPU)), ms(median(fourCPU)))
	busyFloor := median(fourMachine) / time.Duration(runtime.NumCPU())
	fmt.Printf("  and systemd included: 1 target %s, 4 targets %s, on %d cores: the 4 targets' work alone needs %s,\n",
		ms(median(oneMachine)), ms(median(fourMachine)), runtime.NumCPU(), ms(busyFloor))
	fmt.Printf("  so the lowest ratio this machine allows is %.2f (on separate servers, each target's work is its own)\n",
		max(1, float64(busyFloor)/float64(one)))
	fmt.Printf("  no-op deploy (target already on it)   %s   (target <= 500 ms; the whole command, process start included)\n", ms(median(noops)))

	// 2. A closure over 200 MiB to a target that lacks it: pulled from the cache, sent by hearth,
	// and nix copy --to ssh:// of the same closure, each to a target of its own.
	if bigRuns == 0 {
		return nil
	}
	var pulls, sends, copies []time.Duration
	var size string
	for i := 0; i < bigRuns; i++ {
		data, err := parts.AddRandom(fmt.Sprintf("bench-big-%d-%d", stamp, i), 200<<20)
		if err != nil {
			return err
		}
		sys, err := system(data)
		if err != nil {
			return err
		}
		_, out, err := hearth(pull, "deploy", "t2="+sys)
		if err != nil {
			return err
		}
		d, what, err := transferTime(out, "pulled")
		if err != nil {
			return err
		}
		pulls, size = append(pulls, d), what
		if _, out, err = hearth(push, "deploy", "t3="+sys); err != nil {
			return err
		}
		if d, _, err = transferTime(out, "sent"); err != nil {
			return err
		}
		sends = append(sends, d)
		t4 := fleet.Targets()[3]
		cmd := exec.Command("nix", "--extra-experimental-features", "nix-command", "copy", "--no-check-sigs", "--to", "ssh://root@"+t4.Addr, sys)
		cmd.Env = append(os.Environ(), parts.NixEnv()...)
		cmd.Env = append(cmd.Env, "NIX_SSHOPTS="+strings.Join(t4.SSHOptions(), " "))
		start := time.Now()
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("nix copy: %v\n%s", err, out)
		}
		copies = append(copies, time.Since(start))
	}
	floor := median(copies)
	fmt.Printf("\nA closure of %s (a 200 MiB path of random data and a system) to a target that lacks it,\nagainst `nix copy --no-check-sigs --to ssh://root@TARGET` of the same closure (%d runs):\n", size, bigRuns)
	fmt.Printf("  floor: nix copy --to ssh://            %s\n", ms(floor))
	fmt.Printf("  pull: the target substitutes from the cache over HTTP   %s   ratio %.2f\n", ms(median(pulls)), float64(median(pulls))/float64(floor))
	fmt.Printf("  push: hearth streams it into nix-store --serve --write %s   ratio %.2f\n", ms(median(sends)), float64(median(sends))/float64(floor))
	return nil
}

// busyCPU is the CPU time the machine has spent not idle, from /proc/stat.
func busyCPU() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	f := strings.Fields(strings.SplitN(string(b), "\n", 2)[0])
	var busy int64
	for i, v := range f[1:] {
		n, _ := strconv.ParseInt(v, 10, 64)
		if i != 3 && i != 4 { // idle, iowait
			busy += n
		}
	}
	return time.Duration(busy) * time.Second / 100 // USER_HZ
}

var transferLine = regexp.MustCompile(`\] (pulled|sent) \d+ paths \(([^)]+)\) .*in ([0-9.]+m?s) `)

// transferTime reads how long the transfer took from hearth deploy's log.
func transferTime(out, verb string) (time.Duration, string, error) {
	for _, m := range transferLine.FindAllStringSubmatch(out, -1) {
		if m[1] == verb {
			d, err := time.ParseDuration(m[3])
			return d, m[2], err
		}
	}
	return 0, "", fmt.Errorf("hearth deploy did not say it %s anything:\n%s", verb, out)
}
