package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/hearth-ci/hearth/internal/testenv"
)

// benchNetwork measures the whole job with trivial stages on the bridge against the host
// network, interleaved: the difference is the namespace, the CNI calls and the firewall check.
func benchNetwork(parts *testenv.Parts, runs int) error {
	host, err := parts.WriteConfig(`network = "host"`, "", "")
	if err != nil {
		return err
	}
	bridge, err := parts.WriteConfig(`network = "bridge"`, "", "")
	if err != nil {
		return err
	}
	trivial := "job:\n  variables:\n    GIT_STRATEGY: none\n  script: [\"true\"]\n"
	calls := map[string]map[string][]time.Duration{"host": {}, "bridge": {}}
	var hosts, bridges []time.Duration
	for i := 0; i <= runs; i++ {
		for _, mode := range []string{"host", "bridge"} {
			cfg := map[string]string{"host": host, "bridge": bridge}[mode]
			per := map[string]time.Duration{}
			d, log, err := runJob(parts, cfg, trivial, func(call string, d time.Duration) { per[call] += d })
			if err != nil {
				return fmt.Errorf("trivial job (%s network): %v\n%s", mode, err, log)
			}
			if i == 0 {
				continue // warm-up: the bridge and the firewall are made by the first job
			}
			if mode == "host" {
				hosts = append(hosts, d)
			} else {
				bridges = append(bridges, d)
			}
			for k, v := range per {
				calls[mode][k] = append(calls[mode][k], v)
			}
		}
	}
	h, b := median(hosts), median(bridges)
	fmt.Println()
	fmt.Println("Whole job, trivial stages, on the bridge network against the host network (interleaved):")
	fmt.Printf("  host network                        %s\n", ms(h))
	fmt.Printf("  bridge network                      %s\n", ms(b))
	fmt.Printf("  ratio                               %.2f\n", float64(b)/float64(h))
	for _, k := range []string{"prepare", "cleanup"} {
		fmt.Printf("  %s: host %s, bridge %s (+%s: namespace, CNI, firewall)\n", k, ms(median(calls["host"][k])), ms(median(calls["bridge"][k])),
			ms(median(calls["bridge"][k])-median(calls["host"][k])))
	}
	return nil
}

// benchTiers measures what the split into trust tiers costs in warmth: a derivation a protected
// job built (and pushed to the team cache) is built again by the first unprotected job, which
// substitutes it from the cache, against a second protected job, whose store has it. The first
// unprotected job of an environment also copies the environment into the tier's store.
func benchTiers(parts *testenv.Parts, pairs int) error {
	d, err := parts.NewDaemon()
	if err != nil {
		return err
	}
	defer d.Stop()
	u, err := parts.NewTierDaemon(true)
	if err != nil {
		return err
	}
	defer u.Stop()
	cfg, err := d.WriteTieredConfig(u, `network = "host"`, "", fmt.Sprintf("\n[cache.file]\ndir = %q\nsigning_key_file = %q\n", parts.TeamCache, parts.TeamKey))
	if err != nil {
		return err
	}
	trivial := "job:\n  variables:\n    GIT_STRATEGY: none\n  script: [\"true\"]\n"
	var firstPrepare, laterPrepare time.Duration
	for i := 0; i < 2; i++ {
		prep := time.Duration(0)
		if _, log, err := runJobAs(parts, cfg, trivial, false, func(call string, d time.Duration) {
			if call == "prepare" {
				prep += d
			}
		}); err != nil {
			return fmt.Errorf("unprotected job: %v\n%s", err, log)
		}
		if i == 0 {
			firstPrepare = prep
		} else {
			laterPrepare = prep
		}
	}
	var pFirst, pSecond, uFirst []time.Duration
	stamp := time.Now().UnixNano()
	for i := 0; i < pairs; i++ {
		src := buildJob(parts.Tools, fmt.Sprintf("tiers-%d-%d", stamp, i))
		for _, step := range []struct {
			protected bool
			into      *[]time.Duration
		}{{true, &pFirst}, {true, &pSecond}, {false, &uFirst}} {
			_, log, err := runJobAs(parts, cfg, src, step.protected, nil)
			if err != nil {
				return fmt.Errorf("build job: %v\n%s", err, log)
			}
			b, err := buildTime(log)
			if err != nil {
				return fmt.Errorf("%v\n%s", err, log)
			}
			if !step.protected && !strings.Contains(log, "copying path") {
				return fmt.Errorf("the unprotected job did not substitute what the protected one pushed:\n%s", log)
			}
			*step.into = append(*step.into, b)
		}
	}
	fmt.Println()
	fmt.Printf("Trust tiers: what a protected job built (and pushed), built again (%d runs):\n", pairs)
	fmt.Printf("  protected, first build               %s\n", ms(median(pFirst)))
	fmt.Printf("  protected, second build              %s\n", ms(median(pSecond)))
	fmt.Printf("  unprotected, first build             %s   (substituted from the team cache)\n", ms(median(uFirst)))
	fmt.Printf("  ratio unprotected first / protected second   %.2f\n", float64(median(uFirst))/float64(median(pSecond)))
	fmt.Printf("  ratio unprotected first / protected first    %.3f\n", float64(median(uFirst))/float64(median(pFirst)))
	fmt.Printf("  prepare of the first unprotected job %s (copies the environment into the tier's store), later %s\n", ms(firstPrepare), ms(laterPrepare))
	return nil
}
