package nixos

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/hearth-ci/hearth/config"
)

// LibEnv names a copy of nix-community/nixpkgs.lib (nixpkgs' lib/ alone), whose module system the
// evaluation tests run the modules with. CI has none, and skips them.
const LibEnv = "HEARTH_NIXPKGS_LIB"

// evaluation is what nixos/tests/eval.nix returns.
type evaluation struct {
	Failed []string `json:"failed"`
	// Undescribed are hearth's options with no description; HearthOptions counts them all.
	Undescribed   []string `json:"undescribed"`
	HearthOptions int      `json:"hearthOptions"`
	Etc           map[string]struct {
		Source string          `json:"source"`
		Value  json.RawMessage `json:"value"`
		Text   *string         `json:"text"`
	} `json:"etc"`
	Services map[string]unit `json:"services"`
	Timers   map[string]struct {
		WantedBy    []string       `json:"wantedBy"`
		TimerConfig map[string]any `json:"timerConfig"`
	} `json:"timers"`
	Tmpfiles     []string                   `json:"tmpfiles"`
	NixSettings  map[string]json.RawMessage `json:"nixSettings"`
	GitlabRunner struct {
		Enable              bool                    `json:"enable"`
		GracefulTermination bool                    `json:"gracefulTermination"`
		Settings            map[string]any          `json:"settings"`
		ExtraPackages       []string                `json:"extraPackages"`
		Services            map[string]gitlabRunner `json:"services"`
	} `json:"gitlabRunner"`
	Users map[string]struct {
		IsSystemUser bool     `json:"isSystemUser"`
		Group        string   `json:"group"`
		ExtraGroups  []string `json:"extraGroups"`
		Keys         []string `json:"keys"`
	} `json:"users"`
	Groups         []string        `json:"groups"`
	Atticd         json.RawMessage `json:"atticd"`
	Postgresql     json.RawMessage `json:"postgresql"`
	Nginx          json.RawMessage `json:"nginx"`
	Acme           json.RawMessage `json:"acme"`
	Sudo           json.RawMessage `json:"sudo"`
	Openssh        json.RawMessage `json:"openssh"`
	SystemPackages []string        `json:"systemPackages"`
	// GrafanaProviders are services.grafana.provision.dashboards.settings.providers.
	GrafanaProviders []struct {
		Name    string `json:"name"`
		Type    string `json:"type"`
		Options struct {
			Path string `json:"path"`
		} `json:"options"`
	} `json:"grafanaProviders"`
	PrometheusScrapeConfigs []struct {
		JobName       string `json:"job_name"`
		StaticConfigs []struct {
			Targets []string          `json:"targets"`
			Labels  map[string]string `json:"labels"`
		} `json:"static_configs"`
	} `json:"prometheusScrapeConfigs"`
}

type unit struct {
	WantedBy        []string          `json:"wantedBy"`
	After           []string          `json:"after"`
	Before          []string          `json:"before"`
	Wants           []string          `json:"wants"`
	Requires        []string          `json:"requires"`
	Environment     map[string]string `json:"environment"`
	Path            []string          `json:"path"`
	ServiceConfig   map[string]any    `json:"serviceConfig"`
	RestartTriggers []string          `json:"restartTriggers"`
	Script          string            `json:"script"`
}

type gitlabRunner struct {
	Executor                      string   `json:"executor"`
	AuthenticationTokenConfigFile string   `json:"authenticationTokenConfigFile"`
	RegistrationFlags             []string `json:"registrationFlags"`
	Limit                         int      `json:"limit"`
}

// evaluate evaluates module (a file under nixos/) with configuration, a NixOS module in Nix.
func evaluate(t *testing.T, module, configuration string) evaluation {
	t.Helper()
	lib := os.Getenv(LibEnv)
	if lib == "" {
		t.Skipf("SKIPPED: %s is not set: the NixOS modules were not evaluated (point it at a copy of github.com/nix-community/nixpkgs.lib)", LibEnv)
	}
	if _, err := os.Stat(filepath.Join(lib, "lib", "modules.nix")); err != nil {
		t.Fatalf("%s=%s is not a nixpkgs lib (no lib/modules.nix): %v", LibEnv, lib, err)
	}
	cfg := filepath.Join(t.TempDir(), "configuration.nix")
	if err := os.WriteFile(cfg, []byte(configuration), 0o644); err != nil {
		t.Fatal(err)
	}
	lib, err := filepath.Abs(lib)
	if err != nil {
		t.Fatal(err)
	}
	mod, err := filepath.Abs(module)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("nix-instantiate", "--eval", "--strict", "--json", "--readonly-mode", "tests/eval.nix",
		"--argstr", "nixpkgsLib", lib, "--argstr", "module", mod, "--argstr", "configuration", cfg)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("evaluating %s: %v\n%s", module, err, stderr.String())
	}
	var e evaluation
	if err := json.Unmarshal(out, &e); err != nil {
		t.Fatalf("evaluating %s: the result does not read as JSON: %v", module, err)
	}
	return e
}

// runnerHost is a runner host's configuration with body added to services.hearth.
func runnerHost(body string, extra ...string) string {
	return fmt.Sprintf(`{ pkgs, lib, ... }: {
  nix.package = pkgs.nix;
  services.hearth = {
    enable = true;
    package = pkgs.hearth;
    ciEnv = pkgs.hearth-ci-env;
    runners.main.authenticationTokenConfigFile = "/run/secrets/gitlab-runner.env";
    %s
  };
  %s
}`, body, strings.Join(extra, "\n  "))
}

// everyOptionDescribed fails t when one of the module's options (at least `least` of them, so that
// the list is known to be read) has no description.
func everyOptionDescribed(t *testing.T, e evaluation, least int) {
	t.Helper()
	if e.HearthOptions < least || len(e.Undescribed) > 0 {
		t.Errorf("of %d options, these have no description: %q", e.HearthOptions, e.Undescribed)
	}
}

// hearthConfig is the TOML the module renders, as hearth's strict config.Parse reads it.
func hearthConfig(t *testing.T, e evaluation) (*config.Config, string) {
	t.Helper()
	f, ok := e.Etc["hearth/config.toml"]
	if !ok {
		t.Fatalf("no environment.etc.\"hearth/config.toml\"; etc has %v", slices.Sorted(maps.Keys(e.Etc)))
	}
	dec := json.NewDecoder(bytes.NewReader(f.Value))
	dec.UseNumber()
	var v map[string]any
	if err := dec.Decode(&v); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := toml.NewEncoder(&buf).Encode(integers(v)); err != nil {
		t.Fatal(err)
	}
	c, err := config.Parse(buf.Bytes())
	if err != nil {
		t.Fatalf("hearth refuses the config the module renders: %v\n%s", err, buf.String())
	}
	return c, buf.String()
}

// integers turns JSON numbers back into the integers (or floats) Nix had.
func integers(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			x[k] = integers(e)
		}
	case []any:
		for i, e := range x {
			x[i] = integers(e)
		}
	case json.Number:
		if i, err := x.Int64(); err == nil {
			return i
		}
		f, _ := x.Float64()
		return f
	}
	return v
}

// A minimal runner host: it evaluates with no failed assertion, renders a config hearth accepts
// (two trust tiers, the default environment under the image names Nix pipelines use), and makes
// the units intended.
func TestRunnerModule(t *testing.T) {
	e := evaluate(t, "runner.nix", runnerHost(""))
	if len(e.Failed) != 0 {
		t.Fatalf("a minimal config fails assertions: %q", e.Failed)
	}
	everyOptionDescribed(t, e, 60)
	c, rendered := hearthConfig(t, e)
	const ciEnv = "/nix/store/00000000000000000000000000000000-hearth-ci-env"
	tiers := c.Nix.Tiers()
	if len(tiers) != 2 || c.Nix.TierFor(true).StoreRoot != "/" || c.Nix.TierFor(false).DaemonSocket != "/run/hearth-unprotected/daemon-socket/socket" {
		t.Fatalf("the module does not set up two trust tiers:\n%s", rendered)
	}
	for _, name := range []string{"default", "nixos/nix:latest", "nixpkgs/nix-flakes"} {
		if env, ok := c.Environments[name]; !ok || env.StorePath != ciEnv {
			t.Errorf("environment %q is %+v, want the ci-env", name, env)
		}
	}
	if c.Jobs.UIDMapStart != 1<<30 || c.Jobs.Network != "bridge" || c.Jobs.Bridge.PluginDirs[0] != "/nix/store/00000000000000000000000000000000-cni-plugins/bin" {
		t.Errorf("jobs: %+v", c.Jobs)
	}

	hook := string(e.NixSettings["post-build-hook"])
	if !strings.Contains(hook, "hearth-post-build-hook") || string(e.NixSettings["sandbox"]) != "true" {
		t.Errorf("nix.settings: post-build-hook %s, sandbox %s", hook, e.NixSettings["sandbox"])
	}
	var trusted []string
	json.Unmarshal(e.NixSettings["trusted-users"], &trusted)
	for _, u := range trusted {
		if u != "root" {
			t.Errorf("nix.settings.trusted-users has %q", u)
		}
	}

	watch := e.Services["hearth-cache-watch"]
	if watch.ServiceConfig["ExecStart"] != "/nix/store/00000000000000000000000000000000-hearth/bin/hearth --config /etc/hearth/config.toml cache watch" || watch.ServiceConfig["Restart"] != "on-failure" || !slices.Contains(watch.WantedBy, "multi-user.target") {
		t.Errorf("hearth-cache-watch: %+v", watch)
	}
	if gc := e.Services["hearth-gc"]; gc.ServiceConfig["Type"] != "oneshot" || !strings.HasSuffix(fmt.Sprint(gc.ServiceConfig["ExecStart"]), " gc") {
		t.Errorf("hearth-gc: %+v", gc)
	}
	if tm := e.Timers["hearth-gc"]; !slices.Contains(tm.WantedBy, "timers.target") || tm.TimerConfig["OnUnitActiveSec"] != "10min" {
		t.Errorf("hearth-gc.timer: %+v", tm)
	}
	// Each tier's store is collected when its disk runs low, through its own daemon.
	sg := e.Services["hearth-store-gc"]
	for _, want := range []string{
		"df --output=avail -B1 /nix/store", "NIX_REMOTE=unix:///nix/var/nix/daemon-socket/socket nix-store --gc --max-freed",
		"df --output=avail -B1 /var/lib/hearth/unprotected/nix/store", "NIX_REMOTE=unix:///run/hearth-unprotected/daemon-socket/socket nix-store --gc --max-freed",
	} {
		if !strings.Contains(sg.Script, want) {
			t.Errorf("hearth-store-gc's script lacks %q:\n%s", want, sg.Script)
		}
	}
	if out, err := exec.Command("bash", "-n", "-c", sg.Script).CombinedOutput(); err != nil {
		t.Errorf("hearth-store-gc's script is not valid bash: %v\n%s", err, out)
	}
	if tm := e.Timers["hearth-store-gc"]; !slices.Contains(tm.WantedBy, "timers.target") || tm.TimerConfig["OnCalendar"] != "hourly" {
		t.Errorf("hearth-store-gc.timer: %+v", tm)
	}
	un := e.Services["hearth-nix-unprotected"]
	if un.ServiceConfig["ExecStart"] != "/nix/store/00000000000000000000000000000000-nix/bin/nix-daemon --store /var/lib/hearth/unprotected" ||
		un.Environment["NIX_CONF_DIR"] != "/etc/hearth/nix-unprotected" || un.Environment["NIX_DAEMON_SOCKET_PATH"] != "/run/hearth-unprotected/daemon-socket/socket" ||
		!slices.Contains(un.Before, "gitlab-runner.service") {
		t.Errorf("hearth-nix-unprotected: %+v", un)
	}
	conf := e.Etc["hearth/nix-unprotected/nix.conf"].Text
	if conf == nil || !strings.Contains(*conf, "build-users-group = hearth-nixbld\n") || strings.Contains(*conf, "post-build-hook") {
		t.Errorf("the unprotected tier's nix.conf: %v", conf)
	}
	if u := e.Users["hearth-nixbld1"]; !u.IsSystemUser || u.Group != "hearth-nixbld" || !slices.Contains(e.Groups, "hearth-nixbld") {
		t.Errorf("the unprotected tier's build users: %+v, groups %v", u, e.Groups)
	}
	for _, name := range []string{"nix-daemon", "hearth-nix-unprotected"} {
		deny := fmt.Sprint(e.Services[name].ServiceConfig["IPAddressDeny"])
		for _, want := range []string{"localhost", "link-local", "10.217.0.0/16"} {
			if !strings.Contains(deny, want) {
				t.Errorf("%s.service IPAddressDeny = %s, lacks %s", name, deny, want)
			}
		}
	}

	gr := e.GitlabRunner
	r := gr.Services["main"]
	flags := strings.Join(r.RegistrationFlags, " ")
	for _, stage := range []string{"config", "prepare", "run", "cleanup"} {
		want := fmt.Sprintf("--custom-%s-exec /nix/store/00000000000000000000000000000000-hearth/bin/hearth --custom-%[1]s-args driver --custom-%[1]s-args %[1]s", stage)
		if !strings.Contains(flags, want) {
			t.Errorf("registrationFlags lack %q: %s", want, flags)
		}
	}
	if !gr.Enable || !gr.GracefulTermination || r.Executor != "custom" || r.AuthenticationTokenConfigFile != "/run/secrets/gitlab-runner.env" {
		t.Errorf("services.gitlab-runner: %+v", gr)
	}
	// Every program hearth runs is on the PATH of the units that run it.
	for unit, path := range map[string][]string{"gitlab-runner (extraPackages)": gr.ExtraPackages, "hearth-gc": e.Services["hearth-gc"].Path} {
		for _, want := range []string{"-nix", "-iptables", "-iproute2"} {
			found := false
			for _, p := range path {
				found = found || strings.HasSuffix(p, want)
			}
			if !found {
				t.Errorf("%s's PATH lacks %s: %v", unit, want, path)
			}
		}
	}
	if allow, ok := e.Services["nix-daemon"].ServiceConfig["IPAddressAllow"]; ok {
		t.Errorf("without systemd-resolved the daemon's filter allows %v", allow)
	}
	runnerUnit := e.Services["gitlab-runner"]
	if runnerUnit.ServiceConfig["DynamicUser"] != false || runnerUnit.ServiceConfig["User"] != "root" || !slices.Contains(runnerUnit.After, "containerd.service") || !slices.Contains(runnerUnit.After, "hearth-nix-unprotected.service") {
		t.Errorf("gitlab-runner.service: %+v", runnerUnit)
	}
	for _, dir := range []string{"/var/lib/hearth/builds", "/var/lib/hearth/cache", "/run/hearth", "/var/lib/hearth/queue", "/var/lib/hearth/unprotected"} {
		found := false
		for _, rule := range e.Tmpfiles {
			found = found || strings.HasPrefix(rule, "d "+dir+" ")
		}
		if !found {
			t.Errorf("no tmpfiles rule makes %s: %q", dir, e.Tmpfiles)
		}
	}
}

// With systemd-resolved, fetchers may reach its stub resolver through the daemons' filters.
func TestRunnerModuleResolved(t *testing.T) {
	e := evaluate(t, "runner.nix", runnerHost("", "services.resolved.enable = true;"))
	for _, unit := range []string{"nix-daemon", "hearth-nix-unprotected"} {
		if allow := fmt.Sprint(e.Services[unit].ServiceConfig["IPAddressAllow"]); allow != "[127.0.0.53]" {
			t.Errorf("%s.service IPAddressAllow = %s, want [127.0.0.53]", unit, allow)
		}
	}
}

// trustAllJobs: one tier, the system's daemon and store, and no second daemon.
func TestRunnerModuleOneTier(t *testing.T) {
	e := evaluate(t, "runner.nix", runnerHost("trustAllJobs = true;"))
	if len(e.Failed) != 0 {
		t.Fatalf("failed assertions: %q", e.Failed)
	}
	c, rendered := hearthConfig(t, e)
	if len(c.Nix.Tiers()) != 1 || c.Nix.DaemonSocket != "/nix/var/nix/daemon-socket/socket" {
		t.Fatalf("trustAllJobs does not give one tier:\n%s", rendered)
	}
	if _, ok := e.Services["hearth-nix-unprotected"]; ok {
		t.Error("trustAllJobs still runs the unprotected tier's daemon")
	}
}

// Typed and freeform settings, an S3 backend on B2 and a deploy target, all reach hearth's config as
// hearth reads them.
func TestRunnerModuleSettings(t *testing.T) {
	e := evaluate(t, "runner.nix", runnerHost(`
    settings.cache = {
      backend = "s3";
      push = "protected";
      s3 = {
        bucket = "team-nix";
        region = "us-west-004";
        endpoint = "https://s3.us-west-004.backblazeb2.com";
        access_key_id_file = "/run/secrets/b2-key-id";
        secret_access_key_file = "/run/secrets/b2-key";
        signing_key_file = "/run/secrets/nix-signing-key";
      };
    };
    settings.jobs.memory = "8GiB";
    settings.jobs.stop_timeout = "3s";
    settings.deploy.targets.vps = {
      host = "vps.example.com";
      known_hosts_file = "/etc/hearth/known_hosts.vps";
      identity_file = "/run/secrets/deploy_ed25519";
      projects = [ "infra/nixos" ];
    };
    environments.rust.image = "docker.io/library/rust:1";
    cachePrune.olderThan = "90d";`))
	if len(e.Failed) != 0 {
		t.Fatalf("failed assertions: %q", e.Failed)
	}
	c, rendered := hearthConfig(t, e)
	if c.Cache.Backend != "s3" || c.Cache.S3.Bucket != "team-nix" || c.Cache.S3.SecretAccessKeyFile != "/run/secrets/b2-key" || c.Cache.Push != "protected" {
		t.Errorf("cache: %+v\n%s", c.Cache, rendered)
	}
	if c.Jobs.Memory != 8<<30 || c.Jobs.MemoryMax != 8<<30 || time.Duration(c.Jobs.StopTimeout) != 3*time.Second {
		t.Errorf("jobs: memory %d, memory_max %d, stop_timeout %v", c.Jobs.Memory, c.Jobs.MemoryMax, time.Duration(c.Jobs.StopTimeout))
	}
	if tg, ok := c.Deploy.Targets["vps"]; !ok || tg.Host != "vps.example.com" {
		t.Errorf("deploy targets: %+v", c.Deploy.Targets)
	}
	if env := c.Environments["rust"]; env.Image != "docker.io/library/rust:1" || env.StorePath != "" {
		t.Errorf("environment rust: %+v", env)
	}
	if pr := e.Services["hearth-cache-prune"]; pr.ServiceConfig["ExecStart"] != "/nix/store/00000000000000000000000000000000-hearth/bin/hearth --config /etc/hearth/config.toml cache prune --older-than 90d" {
		t.Errorf("hearth-cache-prune: %+v", pr)
	}
	if tm := e.Timers["hearth-cache-prune"]; !slices.Contains(tm.WantedBy, "timers.target") || tm.TimerConfig["OnCalendar"] != "weekly" {
		t.Errorf("hearth-cache-prune.timer: %+v", tm)
	}
}

// Metrics: on by default on a loopback listener; a Grafana on the host gets the dashboard, a
// Prometheus on the host a scrape job; turned off, hearth records nothing and neither is touched.
func TestRunnerModuleMetrics(t *testing.T) {
	e := evaluate(t, "runner.nix", runnerHost("", "services.grafana.enable = true;", "services.prometheus.enable = true;", `networking.hostName = "runner1";`))
	if len(e.Failed) != 0 {
		t.Fatalf("failed assertions: %q", e.Failed)
	}
	c, rendered := hearthConfig(t, e)
	if c.Metrics.Listen != "127.0.0.1:9863" {
		t.Errorf("[metrics] listen = %q, want the loopback default:\n%s", c.Metrics.Listen, rendered)
	}
	if len(e.GrafanaProviders) != 1 || e.GrafanaProviders[0].Name != "hearth" || e.GrafanaProviders[0].Type != "file" {
		t.Fatalf("grafana dashboard providers: %+v", e.GrafanaProviders)
	}
	if _, err := os.Stat(filepath.Join(e.GrafanaProviders[0].Options.Path, "hearth.json")); err != nil {
		t.Errorf("the provider's path does not hold the dashboard: %v", err)
	}
	sc := e.PrometheusScrapeConfigs
	if len(sc) != 1 || sc[0].JobName != "hearth" || len(sc[0].StaticConfigs) != 1 || fmt.Sprint(sc[0].StaticConfigs[0].Targets) != "[127.0.0.1:9863]" ||
		sc[0].StaticConfigs[0].Labels["instance"] != "runner1" {
		t.Errorf("prometheus scrape configs: %+v", sc)
	}
	// The scrape follows the address hearth listens on, however it is set.
	e = evaluate(t, "runner.nix", runnerHost(`settings.metrics.listen = "10.0.0.5:9100";`, "services.prometheus.enable = true;"))
	if sc := e.PrometheusScrapeConfigs; len(sc) != 1 || fmt.Sprint(sc[0].StaticConfigs[0].Targets) != "[10.0.0.5:9100]" {
		t.Errorf("with settings.metrics.listen set, prometheus scrape configs: %+v", sc)
	}

	e = evaluate(t, "runner.nix", runnerHost("metrics.enable = false;", "services.grafana.enable = true;", "services.prometheus.enable = true;"))
	if c, _ := hearthConfig(t, e); c.Metrics.Listen != "" || len(e.GrafanaProviders) != 0 || len(e.PrometheusScrapeConfigs) != 0 {
		t.Errorf("metrics off: listen %q, providers %+v, scrape configs %+v", c.Metrics.Listen, e.GrafanaProviders, e.PrometheusScrapeConfigs)
	}
	// Without a Grafana or a Prometheus on the host, their options are left alone.
	e = evaluate(t, "runner.nix", runnerHost(""))
	if len(e.GrafanaProviders) != 0 || len(e.PrometheusScrapeConfigs) != 0 {
		t.Errorf("no grafana or prometheus here, yet providers %+v, scrape configs %+v", e.GrafanaProviders, e.PrometheusScrapeConfigs)
	}
}

// Each assertion fires on the configuration it is for, with its sentence.
func TestRunnerModuleAssertions(t *testing.T) {
	for _, tc := range []struct {
		name, body, extra, want string
	}{
		{"the job range overlaps a user's sub-uids", "", `users.users.alice = { isNormalUser = true; subUidRanges = [ { startUid = 1073741824; count = 65536; } ]; };`,
			"overlap users.users.alice.subUidRanges (1073741824, 65536 ids)"},
		{"the job range among NixOS's automatic sub-uids", "settings.jobs.uid_map_start = 100000;", `users.users.alice.isNormalUser = true;`,
			"among the sub-uids NixOS hands out automatically (100000–165535"},
		{"trusted-users holds *", "", `nix.settings.trusted-users = [ "*" ];`,
			`nix.settings.trusted-users holds "*"`},
		{"a trusted user's uid in the job range", "", `nix.settings.trusted-users = [ "ci" ]; users.users.ci = { isSystemUser = true; group = "ci"; uid = 1073741900; };`,
			"nix.settings.trusted-users holds ci, whose id is in the jobs' uid range"},
		{"a trusted uid, by number, in the job range", "", `nix.settings.trusted-users = [ "1073741825" ];`,
			"nix.settings.trusted-users holds 1073741825, whose id is in the jobs' uid range"},
		{"a trusted group's gid in the job range", "", `nix.settings.trusted-users = [ "@ci" ]; users.groups.ci.gid = 1073741824;`,
			"nix.settings.trusted-users holds @ci, whose id is in the jobs' uid range"},
		{"a secret in the store", `settings.cache.file.signing_key_file = "/nix/store/00000000000000000000000000000000-key";`, "",
			"cache.file.signing_key_file = /nix/store/00000000000000000000000000000000-key is in the Nix store"},
		{"a secret given as a Nix path", `settings.deploy.targets.vps = { host = "vps"; known_hosts_file = "/etc/hearth/kh"; identity_file = ./configuration.nix; projects = [ "1" ]; };`, "",
			"deploy.targets.vps.identity_file = "},
		{"a deploy key in the store", `settings.deploy.targets.vps = { host = "vps"; known_hosts_file = "/etc/hearth/kh"; identity_file = "/nix/store/00000000000000000000000000000000-id"; projects = [ "1" ]; };`, "",
			"deploy.targets.vps.identity_file = /nix/store/00000000000000000000000000000000-id is in the Nix store"},
		{"a runner token in the store", `runners.other.authenticationTokenConfigFile = "/nix/store/00000000000000000000000000000000-token";`, "",
			"services.hearth.runners.other.authenticationTokenConfigFile = /nix/store/00000000000000000000000000000000-token is in the Nix store"},
		{"s3 without its bucket", `settings.cache.backend = "s3"; settings.cache.s3.endpoint = "https://s3.us-west-004.backblazeb2.com";`, "",
			`cache.backend = "s3" needs cache.s3.bucket and cache.s3.endpoint`},
		{"s3 without its endpoint", `settings.cache.backend = "s3"; settings.cache.s3.bucket = "b";`, "",
			`cache.backend = "s3" needs cache.s3.bucket and cache.s3.endpoint`},
		{"attic without its endpoint", `settings.cache.backend = "attic"; settings.cache.attic.cache = "team";`, "",
			`cache.backend = "attic" needs cache.attic.endpoint`},
		{"a prune of an Attic cache", `settings.cache.backend = "attic"; settings.cache.attic = { endpoint = "https://attic.example.com/"; cache = "team"; }; cachePrune.olderThan = "90d";`, "",
			"services.hearth.cachePrune is for file and S3 caches"},
		{"metrics on a host name", `metrics.listen = "localhost:9863";`, "",
			`services.hearth.metrics.listen (settings.metrics.listen) = "localhost:9863": give an IP address and a port`},
		{"metrics on a port past 65535", `settings.metrics.listen = "127.0.0.1:99999";`, "",
			`(settings.metrics.listen) = "127.0.0.1:99999": give an IP address and a port`},
		{"a Grafana that takes dashboards from a path", "", `services.grafana = { enable = true; provision.dashboards.path = "/var/lib/grafana-dashboards"; };`,
			"services.grafana.provision.dashboards.path is set"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := evaluate(t, "runner.nix", runnerHost(tc.body, tc.extra))
			if len(e.Failed) != 1 || !strings.Contains(e.Failed[0], tc.want) {
				t.Fatalf("failed assertions %q, want one saying %q", e.Failed, tc.want)
			}
		})
	}
}

// The Attic server: PostgreSQL over its socket with peer authentication, storage in the B2 bucket
// through its S3 endpoint with checksums only where required, zstd and chunking, collection, and
// nginx in front with TLS, no body limit and long timeouts.
func TestAtticServerModule(t *testing.T) {
	e := evaluate(t, "attic-server.nix", `{ ... }: {
  services.hearth-attic = {
    enable = true;
    domain = "attic.example.com";
    b2 = { bucket = "team-attic"; region = "us-west-004"; };
    environmentFile = "/run/secrets/atticd.env";
    acmeEmail = "ops@example.com";
  };
}`)
	if len(e.Failed) != 0 {
		t.Fatalf("failed assertions: %q", e.Failed)
	}
	everyOptionDescribed(t, e, 8)
	var a struct {
		Enable          bool   `json:"enable"`
		EnvironmentFile string `json:"environmentFile"`
		Settings        struct {
			APIEndpoint  string   `json:"api-endpoint"`
			AllowedHosts []string `json:"allowed-hosts"`
			Database     struct {
				URL string `json:"url"`
			} `json:"database"`
			Storage     map[string]string `json:"storage"`
			Compression struct {
				Type string `json:"type"`
			} `json:"compression"`
			Chunking          map[string]int    `json:"chunking"`
			GarbageCollection map[string]string `json:"garbage-collection"`
		} `json:"settings"`
	}
	if err := json.Unmarshal(e.Atticd, &a); err != nil {
		t.Fatal(err)
	}
	st := a.Settings.Storage
	if !a.Enable || a.EnvironmentFile != "/run/secrets/atticd.env" || st["type"] != "s3" || st["bucket"] != "team-attic" || st["endpoint"] != "https://s3.us-west-004.backblazeb2.com" || st["region"] != "us-west-004" {
		t.Errorf("services.atticd: %s", e.Atticd)
	}
	if a.Settings.Database.URL != "postgresql:///atticd?host=/run/postgresql&user=atticd" || a.Settings.Compression.Type != "zstd" || a.Settings.Chunking["nar-size-threshold"] == 0 || a.Settings.GarbageCollection["interval"] == "" || a.Settings.APIEndpoint != "https://attic.example.com/" {
		t.Errorf("services.atticd.settings: %s", e.Atticd)
	}
	if env := e.Services["atticd"].Environment; env["AWS_REQUEST_CHECKSUM_CALCULATION"] != "when_required" || env["AWS_RESPONSE_CHECKSUM_VALIDATION"] != "when_required" {
		t.Errorf("atticd's environment keeps the SDK's checksum headers, which B2 refuses: %v", env)
	}
	var pg struct {
		Enable          bool     `json:"enable"`
		EnsureDatabases []string `json:"ensureDatabases"`
		EnsureUsers     []struct {
			Name              string `json:"name"`
			EnsureDBOwnership bool   `json:"ensureDBOwnership"`
		} `json:"ensureUsers"`
	}
	json.Unmarshal(e.Postgresql, &pg)
	if !pg.Enable || !slices.Contains(pg.EnsureDatabases, "atticd") || len(pg.EnsureUsers) != 1 || pg.EnsureUsers[0].Name != "atticd" || !pg.EnsureUsers[0].EnsureDBOwnership {
		t.Errorf("services.postgresql: %s", e.Postgresql)
	}
	var ng struct {
		Enable       bool `json:"enable"`
		VirtualHosts map[string]struct {
			ForceSSL   bool `json:"forceSSL"`
			EnableACME bool `json:"enableACME"`
			Locations  map[string]struct {
				ProxyPass   string `json:"proxyPass"`
				ExtraConfig string `json:"extraConfig"`
			} `json:"locations"`
		} `json:"virtualHosts"`
	}
	json.Unmarshal(e.Nginx, &ng)
	vh, ok := ng.VirtualHosts["attic.example.com"]
	loc := vh.Locations["/"]
	if !ng.Enable || !ok || !vh.ForceSSL || !vh.EnableACME || loc.ProxyPass != "http://127.0.0.1:8080" {
		t.Errorf("services.nginx: %s", e.Nginx)
	}
	for _, want := range []string{"client_max_body_size 0;", "proxy_request_buffering off;", "proxy_read_timeout 1h;", "proxy_send_timeout 1h;"} {
		if !strings.Contains(loc.ExtraConfig, want) {
			t.Errorf("nginx's location lacks %q:\n%s", want, loc.ExtraConfig)
		}
	}
	if !strings.Contains(string(e.Acme), `"acceptTerms":true`) || !strings.Contains(string(e.Acme), "ops@example.com") {
		t.Errorf("security.acme: %s", e.Acme)
	}

	bad := evaluate(t, "attic-server.nix", `{ ... }: { services.hearth-attic = { enable = true; domain = "a"; b2 = { bucket = "b"; region = "r"; }; environmentFile = "/nix/store/00000000000000000000000000000000-atticd.env"; }; }`)
	if len(bad.Failed) != 1 || !strings.Contains(bad.Failed[0], "services.hearth-attic.environmentFile = /nix/store/00000000000000000000000000000000-atticd.env is in the Nix store") {
		t.Errorf("an environment file in the store: failed assertions %q", bad.Failed)
	}
}

// A deploy target: the team cache and its key, and SSH for root — or for a deploy user with one
// sudo rule, for hearth-deploy-target alone.
func TestDeployTargetModule(t *testing.T) {
	const common = `substituters = [ "https://attic.example.com/team" ]; trustedPublicKeys = [ "team:AAAA" ]; authorizedKeys = [ "ssh-ed25519 AAAA hearth" ];`
	root := evaluate(t, "deploy-target.nix", `{ ... }: { services.hearth-deploy-target = { enable = true; `+common+` }; }`)
	if len(root.Failed) != 0 {
		t.Fatalf("failed assertions: %q", root.Failed)
	}
	everyOptionDescribed(t, root, 5)
	if !strings.Contains(string(root.NixSettings["substituters"]), "https://attic.example.com/team") || !strings.Contains(string(root.NixSettings["trusted-public-keys"]), "team:AAAA") {
		t.Errorf("nix.settings: %v", root.NixSettings)
	}
	if u := root.Users["root"]; !slices.Contains(u.Keys, "ssh-ed25519 AAAA hearth") {
		t.Errorf("root's authorized keys: %+v", u)
	}
	if !strings.Contains(string(root.Openssh), `"enable":true`) || !strings.Contains(string(root.Openssh), `"PermitRootLogin":"prohibit-password"`) {
		t.Errorf("services.openssh: %s", root.Openssh)
	}
	if string(root.Sudo) != "[]" {
		t.Errorf("a root target has sudo rules: %s", root.Sudo)
	}

	user := evaluate(t, "deploy-target.nix", `{ pkgs, ... }: { services.hearth-deploy-target = { enable = true; user = "deploy"; netrcFile = "/run/secrets/netrc"; `+common+` }; }`)
	if len(user.Failed) != 0 {
		t.Fatalf("failed assertions: %q", user.Failed)
	}
	if u := user.Users["deploy"]; !u.IsSystemUser || !slices.Contains(u.Keys, "ssh-ed25519 AAAA hearth") {
		t.Errorf("the deploy user: %+v", u)
	}
	if _, ok := user.Users["root"]; ok && len(user.Users["root"].Keys) != 0 {
		t.Errorf("root gets the deploy key too: %+v", user.Users["root"])
	}
	var rules []struct {
		Users    []string `json:"users"`
		RunAs    string   `json:"runAs"`
		Commands []struct {
			Command string   `json:"command"`
			Options []string `json:"options"`
		} `json:"commands"`
	}
	json.Unmarshal(user.Sudo, &rules)
	if len(rules) != 1 || len(rules[0].Commands) != 1 || rules[0].Users[0] != "deploy" || rules[0].RunAs != "root" ||
		rules[0].Commands[0].Command != "/nix/store/00000000000000000000000000000000-hearth-deploy-target/bin/hearth-deploy-target" || !slices.Contains(rules[0].Commands[0].Options, "NOPASSWD") {
		t.Errorf("the sudo rule: %s", user.Sudo)
	}
	if !slices.Contains(user.SystemPackages, "/nix/store/00000000000000000000000000000000-hearth-deploy-target") {
		t.Errorf("hearth-deploy-target is not installed: %v", user.SystemPackages)
	}
	if string(user.NixSettings["netrc-file"]) != `"/run/secrets/netrc"` {
		t.Errorf("netrc-file = %s", user.NixSettings["netrc-file"])
	}

	bad := evaluate(t, "deploy-target.nix", `{ ... }: { services.hearth-deploy-target = { enable = true; netrcFile = "/nix/store/00000000000000000000000000000000-netrc"; substituters = [ ]; trustedPublicKeys = [ ]; authorizedKeys = [ ]; }; }`)
	if len(bad.Failed) != 2 || !strings.Contains(strings.Join(bad.Failed, "\n"), "netrcFile = /nix/store/00000000000000000000000000000000-netrc is in the Nix store") || !strings.Contains(strings.Join(bad.Failed, "\n"), "authorizedKeys is empty") {
		t.Errorf("failed assertions %q", bad.Failed)
	}
}
