package e2e

import (
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hearth-ci/hearth/internal/testenv"
	"github.com/hearth-ci/hearth/nix/nixbase32"
)

var outside struct {
	once sync.Once
	o    *testenv.Outside
	err  error
}

// outsideOf returns the stand-in for the world beyond the host, started once for the package.
func outsideOf(t *testing.T) *testenv.Outside {
	t.Helper()
	outside.once.Do(func() {
		outside.o, outside.err = testenv.StartOutside(filepath.Join(parts.Dir, "outside"))
		if outside.err == nil {
			// Configs written from now on give jobs on the bridge the outside's name server.
			parts.BridgeDNS = []string{outside.o.Addr}
		}
	})
	if outside.err != nil {
		t.Fatal(outside.err)
	}
	return outside.o
}

// bridgeGateway is the bridge's own address, the jobs' gateway: the subnet's first.
func bridgeGateway() string {
	return strings.TrimSuffix(parts.BridgeSubnet, "0/24") + "1"
}

// hostListener serves "host-secret" on every address of the host, as a service on the runner
// host would (a cache, a database), and returns its port.
func hostListener(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "host-secret\n") })}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().(*net.TCPAddr).Port
}

// On the bridge (the default), a job reaches the outside and resolves its names, and reaches
// neither the host (a service on all of the host's addresses: the bridge's gateway, the host's
// other addresses), nor another job on the bridge, nor 169.254.169.254. Each refusal has its
// control: the same server is reachable from the host itself, so it is the network that refuses.
func TestBridgeNetwork(t *testing.T) {
	o := outsideOf(t)
	port := hostListener(t)
	cfg := writeConfig(t, "", "")

	// A neighbour: a job on the bridge serving a file, held open while the other job probes.
	neighbour := newDriverJob(t, cfg, "")
	if code, out := neighbour.call("prepare"); code != 0 {
		t.Fatalf("prepare: %d\n%s", code, out)
	}
	defer neighbour.call("cleanup")
	code, out := neighbour.runScript("build_script", "mkdir -p /tmp/www && echo neighbour-secret > /tmp/www/x && httpd -p 9000 -h /tmp/www && ip -4 -o addr show eth0")
	if code != 0 {
		t.Fatalf("the neighbour's server: %d\n%s", code, out)
	}
	neighbourAddr := regexp.MustCompile(`inet (` + regexp.QuoteMeta(strings.TrimSuffix(parts.BridgeSubnet, "0/24")) + `\d+)/`).FindStringSubmatch(out)
	if neighbourAddr == nil {
		t.Fatalf("the neighbour has no address on the bridge:\n%s", out)
	}
	for what, url := range map[string]string{
		"the outside":     o.WebURL,
		"the metadata":    o.MetadataURL,
		"the neighbour":   "http://" + neighbourAddr[1] + ":9000/x",
		"the host's port": fmt.Sprintf("http://127.0.0.1:%d/", port),
	} {
		if _, err := httpGet(url); err != nil {
			t.Fatalf("the control fails: the host itself cannot reach %s at %s: %v", what, url, err)
		}
	}

	// An HTTP request by hand: the environment's busybox wget cannot resolve, even addresses.
	probe := func(url, ok, refused string) string {
		hostPort, path, _ := strings.Cut(strings.TrimPrefix(url, "http://"), "/")
		host, port, _ := strings.Cut(hostPort, ":")
		return fmt.Sprintf("    - (printf 'GET /%s HTTP/1.0\\r\\n\\r\\n' | nc -w 2 %s %s 2>/dev/null || true) | grep -q %s && echo %s || echo %s\n", path, host, port, strings.Fields(ok)[0], ok, refused)
	}
	src := "probe:\n  script:\n    - cat /etc/resolv.conf\n" +
		"    - echo ipv6-off $(cat /proc/sys/net/ipv6/conf/all/disable_ipv6) $(ip -6 addr | grep -c inet6 || true)\n" +
		"    - nslookup " + o.Name + " > /tmp/ns || true; (grep -A1 'Name:' /tmp/ns || true) | tail -1\n" +
		probe(o.WebURL, o.Greeting+" reached-outside", "NO-OUTSIDE") +
		probe(o.MetadataURL, "metadata-secret METADATA-REACHED", "no-metadata") +
		probe("http://"+neighbourAddr[1]+":9000/x", "neighbour-secret NEIGHBOUR-REACHED", "no-neighbour") +
		probe(fmt.Sprintf("http://%s:%d/", bridgeGateway(), port), "host-secret GATEWAY-REACHED", "no-gateway") +
		probe(fmt.Sprintf("http://%s:%d/", o.HostAddr, port), "host-secret HOST-ADDRESS-REACHED", "no-host-address") +
		// The job's 127.0.0.1 is its own namespace's: the host's loopback is not there at all.
		probe(fmt.Sprintf("http://127.0.0.1:%d/", port), "host-secret HOST-LOOPBACK-REACHED", "no-host-loopback")
	res, log := runJob(t, cfg, src, "probe")
	if res.State != "success" {
		t.Fatalf("%s\n%s", res, log)
	}
	// No IPv6: the rules are IPv4's, and the bridge has a link-local IPv6 address on the host.
	mustContain(t, log, "ipv6-off 1 0", "nameserver "+o.Addr, "Address: "+o.Addr, "reached-outside", "no-metadata", "no-neighbour", "no-gateway", "no-host-address", "no-host-loopback")
	for _, bad := range []string{"NO-OUTSIDE", "metadata-secret METADATA-REACHED", "neighbour-secret NEIGHBOUR-REACHED", "host-secret GATEWAY-REACHED", "host-secret HOST-ADDRESS-REACHED", "host-secret HOST-LOOPBACK-REACHED"} {
		if strings.Contains(log, "\n"+bad) {
			t.Fatalf("from the bridge: %s\n%s", bad, log)
		}
	}

	// The control: the same job with network = "host" reaches every one of them.
	res, log = runJob(t, writeConfig(t, `network = "host"`, ""), src, "probe")
	if res.State != "success" {
		t.Fatalf("%s\n%s", res, log)
	}
	for _, want := range []string{o.Greeting + " reached-outside", "metadata-secret METADATA-REACHED", "neighbour-secret NEIGHBOUR-REACHED", "host-secret GATEWAY-REACHED", "host-secret HOST-ADDRESS-REACHED", "host-secret HOST-LOOPBACK-REACHED"} {
		if !strings.Contains(log, "\n"+want) {
			t.Fatalf("the control: a host-network job does not reach what the bridge refused (%s):\n%s", want, log)
		}
	}
}

func httpGet(url string) (string, error) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// What a job's network is made of is released when the job ends: its address, its namespace, its
// NAT rules; and gc releases what a prepare that died left.
func TestBridgeLeavesNothing(t *testing.T) {
	outsideOf(t)
	cfg := writeConfig(t, "", "")
	j := newDriverJob(t, cfg, "")
	if code, out := j.call("prepare"); code != 0 {
		t.Fatalf("prepare: %d\n%s", code, out)
	}
	id := j.containerID()
	held := func() []string {
		var found []string
		if ents, _ := filepath.Glob(filepath.Join(parts.StateDir(), "netns", id, "*")); len(ents) > 0 {
			found = append(found, "namespace "+strings.Join(ents, " "))
		}
		allocs, _ := filepath.Glob(filepath.Join(parts.StateDir(), "cni", "hearth", "10.*"))
		for _, a := range allocs {
			if b, _ := os.ReadFile(a); strings.HasPrefix(string(b), id) {
				found = append(found, "address "+filepath.Base(a))
			}
		}
		if nat, _ := exec.Command("iptables", "-t", "nat", "-S").Output(); strings.Contains(string(nat), id) {
			found = append(found, "NAT rules")
		}
		return found
	}
	if got := held(); len(got) != 3 {
		t.Fatalf("a running job on the bridge holds %v, want its namespace, address and NAT rules (the checks below would prove nothing)", got)
	}
	if code, out := j.call("cleanup"); code != 0 {
		t.Fatalf("cleanup: %d\n%s", code, out)
	}
	if got := held(); len(got) != 0 {
		t.Fatalf("after cleanup the job still holds %v", got)
	}

	// A prepare that died after making the network but before the container: gc releases it.
	j = newDriverJob(t, cfg, "")
	if code, out := j.call("prepare"); code != 0 {
		t.Fatalf("prepare: %d\n%s", code, out)
	}
	id = j.containerID()
	for _, args := range [][]string{{"tasks", "kill", "-s", "SIGKILL", id}, {"tasks", "rm", "-f", id}, {"containers", "rm", id}} {
		out, err := parts.Ctr(t.Context(), "hearth-test", args...)
		if err != nil && args[0] != "tasks" {
			t.Fatalf("ctr %v: %v\n%s", args, err, out)
		}
	}
	if got := held(); len(got) != 3 {
		t.Fatalf("the orphan holds %v", got)
	}
	if out, err := runHearth(cfg, "gc", "--older-than", "1ns"); err != nil || !strings.Contains(out, "released the network of job "+id) {
		t.Fatalf("gc: %v\n%s", err, out)
	}
	if got := held(); len(got) != 0 {
		t.Fatalf("after gc the orphan still holds %v", got)
	}
	j.call("cleanup")
}

// A fixed-output build (a fetcher) has the network of the daemon that runs it, whatever the
// job's: with the daemon in the host's network namespace (the control), one asked for by a job
// with network = "none" reaches a service on the host's loopback. A daemon in a namespace of its
// own with NAT, as the README says to run it, gives its fetchers the outside and nothing of the
// host.
func TestFixedOutputBuildsStayOffTheHost(t *testing.T) {
	o := outsideOf(t)
	port := hostListener(t)
	isolated, err := parts.NewIsolatedDaemon()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(isolated.Stop)
	sum := sha256.Sum256([]byte("done\n"))
	for _, tc := range []struct {
		name   string
		daemon *testenv.Daemon
		host   string
	}{
		{"daemon on the host's network (control)", daemonOf(t), "127.0.0.1"},
		{"daemon in a namespace of its own", isolated, isolated.HostAddr},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := tc.daemon.WriteConfig(`network = "none"`, "", "")
			if err != nil {
				t.Fatal(err)
			}
			targets := []string{fmt.Sprintf("%s/%d", tc.host, port), o.Addr + "/8080"}
			r := strings.NewReplacer("TOOLS", parts.Tools, "NONCE", fmt.Sprint(time.Now().UnixNano()), "TARGETS", strings.Join(targets, " "), "HASH", nixbase32.EncodeToString(sum[:]))
			res, log := runJob(t, cfg, r.Replace(`fetch:
  script:
    - |
      cat > fod.nix <<'EOF'
      let tools = builtins.storePath "TOOLS"; in derivation {
        name = "fod-probe-NONCE"; system = "x86_64-linux";
        builder = "${tools}/bin/bash"; PATH = "${tools}/bin";
        args = [ "-c" "for t in TARGETS; do if timeout 3 bash -c \"exec 3<>/dev/tcp/$t\" 2>/dev/null; then echo fod-reached $t; else echo fod-refused $t; fi; done; echo done > $out" ];
        outputHashMode = "flat"; outputHashAlgo = "sha256"; outputHash = "HASH";
      }
      EOF
    - nix-build --no-out-link fod.nix
`), "fetch")
			if res.State != "success" {
				t.Fatalf("%s\n%s", res, log)
			}
			want := []string{"fod-reached " + targets[1]}
			if tc.daemon == isolated {
				want = append(want, "fod-refused "+targets[0])
			} else {
				want = append(want, "fod-reached "+targets[0])
			}
			mustContain(t, log, want...)
		})
	}
}
