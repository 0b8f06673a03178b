package executor

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/containerd/containerd/v2/pkg/netns"
	gocni "github.com/containerd/go-cni"
	cnins "github.com/containernetworking/plugins/pkg/ns"
	"github.com/coreos/go-iptables/iptables"
)

// A job on the bridge gets a network namespace that hearth makes and pins under the state dir
// before its container exists, and removes after the container is gone: the namespace belongs to
// the host's user namespace, not the job's, so the job cannot change its own addresses, routes or
// firewall, and CNI's teardown always finds the namespace it set up, even after a crash.

// netnsDir holds the pinned network namespace of one job.
func (e *Executor) netnsDir(id string) string {
	return filepath.Join(e.cfg.Jobs.StateDir, "netns", id)
}

// cniNetworkName names hearth's network in CNI's caches and in the host-local allocations.
const cniNetworkName = "hearth"

// bridgeCNI is the CNI library loaded with hearth's network: loopback, then the bridge with NAT
// and host-local addresses, then the firewall plugin (which admits the job's traffic through a
// FORWARD chain that defaults to drop, as Docker leaves it).
func (e *Executor) bridgeCNI() (gocni.CNI, error) {
	e.cniOnce.Do(func() {
		b := e.cfg.Jobs.Bridge
		conf := map[string]any{
			"cniVersion": "1.0.0",
			"name":       cniNetworkName,
			"plugins": []any{
				map[string]any{
					"type": "bridge", "bridge": b.Name, "isGateway": true, "ipMasq": true,
					"ipam": map[string]any{
						"type":    "host-local",
						"ranges":  [][]map[string]string{{{"subnet": b.Subnet}}},
						"routes":  []map[string]string{{"dst": "0.0.0.0/0"}},
						"dataDir": filepath.Join(e.cfg.Jobs.StateDir, "cni"),
					},
				},
				map[string]any{"type": "firewall"},
			},
		}
		raw, err := json.Marshal(conf)
		if err != nil {
			e.cniErr = err
			return
		}
		for _, p := range []string{"bridge", "host-local", "firewall", "loopback"} {
			if !pluginFound(b.PluginDirs, p) {
				e.cniErr = fmt.Errorf("the CNI plugin %s is in none of %s ([jobs.bridge] plugin_dirs): install the CNI plugins (Debian: apt-get install containernetworking-plugins), or set network = \"host\" or \"none\"", p, strings.Join(b.PluginDirs, ", "))
				return
			}
		}
		e.cni, e.cniErr = gocni.New(gocni.WithPluginDir(b.PluginDirs), gocni.WithMinNetworkCount(2), gocni.WithInterfacePrefix("eth"))
		if e.cniErr == nil {
			// The bridge first, so that its interface is eth0.
			e.cniErr = e.cni.Load(gocni.WithConfListBytes(raw), gocni.WithLoNetwork)
		}
		if e.cniErr != nil {
			e.cniErr = fmt.Errorf("load hearth's CNI network: %w", e.cniErr)
		}
	})
	return e.cni, e.cniErr
}

func pluginFound(dirs []string, name string) bool {
	for _, d := range dirs {
		if fi, err := os.Stat(filepath.Join(d, name)); err == nil && fi.Mode().IsRegular() {
			return true
		}
	}
	return false
}

// attachBridge makes the job's network namespace and puts it on the bridge. It returns the
// namespace's path, for the container spec. What it made is undone by detachBridge.
func (e *Executor) attachBridge(ctx context.Context, id string) (string, error) {
	cni, err := e.bridgeCNI()
	if err != nil {
		return "", err
	}
	if err := e.makeStateDir(); err != nil {
		return "", err
	}
	dir := e.netnsDir(id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("make the network namespace dir: %w", err)
	}
	ns, err := netns.NewNetNS(dir)
	if err != nil {
		return "", fmt.Errorf("make the network namespace of %s: %w", id, err)
	}
	res, err := cni.Setup(ctx, id, ns.GetPath())
	if err != nil {
		return "", fmt.Errorf("put %s on the bridge %s: %w", id, e.cfg.Jobs.Bridge.Name, err)
	}
	// After the setup, which makes CNI-ADMIN, and before the job's first process starts.
	if err := e.firewall(ctx); err != nil {
		return "", err
	}
	// The rules above are IPv4's: with IPv6 the job could reach the host at the bridge's
	// link-local address. The job has no IPv6 at all, and cannot turn it on in a namespace it
	// does not own.
	if err := ns.Do(func(cnins.NetNS) error {
		for _, f := range []string{"all", "default", "eth0", "lo"} {
			if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+f+"/disable_ipv6", []byte("1\n"), 0o644); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
		}
		return nil
	}); err != nil {
		return "", fmt.Errorf("turn IPv6 off in the network namespace of %s: %w", id, err)
	}
	// Ports of the bridge do not talk to each other: a job cannot reach another job on it.
	for name, iface := range res.Interfaces {
		if iface.Sandbox != "" || name == e.cfg.Jobs.Bridge.Name || !strings.HasPrefix(name, "veth") {
			continue
		}
		if out, err := exec.CommandContext(ctx, "ip", "link", "set", "dev", name, "type", "bridge_slave", "isolated", "on").CombinedOutput(); err != nil {
			return "", fmt.Errorf("isolate %s's port %s on the bridge (ip link): %v: %s", id, name, err, bytes.TrimSpace(out))
		}
	}
	return ns.GetPath(), nil
}

// detachBridge takes the job off the bridge (its address, NAT and firewall rules) and removes its
// network namespace; it does nothing for a job that has none.
func (e *Executor) detachBridge(ctx context.Context, id string) error {
	dir := e.netnsDir(id)
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", dir, err)
	}
	cni, err := e.bridgeCNI()
	if err != nil {
		return err
	}
	for _, ent := range ents {
		path := filepath.Join(dir, ent.Name())
		if err := cni.Remove(ctx, id, path); err != nil {
			return fmt.Errorf("take %s off the bridge: %w", id, err)
		}
		if err := netns.LoadNetNS(path).Remove(); err != nil {
			return fmt.Errorf("remove the network namespace of %s: %w", id, err)
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	return nil
}

// isolateBridge makes the host's firewall keep bridge jobs to the outside: nothing from the
// bridge reaches the host itself (its loopback services, its other addresses) except the name
// servers jobs are given; nothing goes from one job to another through the host; and nothing
// reaches 169.254.0.0/16, where clouds serve instance credentials.
func (e *Executor) isolateBridge(ipt *iptables.IPTables) error {
	br := e.cfg.Jobs.Bridge.Name
	in, fwd := inputChain(br), forwardChain(br)
	chains := map[string][][]string{
		in: {
			{"-i", br, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"},
		},
		fwd: {
			{"-i", br, "-o", br, "-j", "DROP"},
			{"-i", br, "-d", "169.254.0.0/16", "-j", "DROP"},
		},
	}
	servers, err := e.nameServers()
	if err != nil {
		return err
	}
	for _, s := range servers {
		for _, proto := range []string{"udp", "tcp"} {
			chains[in] = append(chains[in], []string{"-i", br, "-d", s, "-p", proto, "--dport", "53", "-j", "ACCEPT"})
		}
	}
	chains[in] = append(chains[in], []string{"-i", br, "-j", "DROP"})
	// A guard left by a prepare killed while it rewrote a chain would cut every job off.
	for _, from := range []string{"INPUT", "FORWARD"} {
		for {
			ok, err := ipt.Exists("filter", from, guardRule(br)...)
			if err != nil || !ok {
				break
			}
			if err := ipt.Delete("filter", from, guardRule(br)...); err != nil {
				return fmt.Errorf("iptables: remove a guard left behind: %w", err)
			}
		}
	}
	for chain, rules := range chains {
		from := map[string]string{in: "INPUT", fwd: "FORWARD"}[chain]
		exists, err := ipt.ChainExists("filter", chain)
		if err != nil {
			return fmt.Errorf("iptables: %w", err)
		}
		if !exists {
			if err := ipt.NewChain("filter", chain); err != nil {
				return fmt.Errorf("iptables: make chain %s: %w", chain, err)
			}
		}
		same, err := chainHolds(ipt, chain, rules)
		if err != nil {
			return err
		}
		if !same {
			// Rewritten whole, the order of its rules being what it means, while everything from
			// the bridge is dropped: a change never opens a gap.
			guard := guardRule(br)
			if err := ipt.Insert("filter", from, 1, guard...); err != nil {
				return fmt.Errorf("iptables: %w", err)
			}
			err := rewriteChain(ipt, chain, rules)
			if derr := ipt.Delete("filter", from, guard...); err == nil && derr != nil {
				err = fmt.Errorf("iptables: %w", derr)
			}
			if err != nil {
				return err
			}
		}
		ok, err := ipt.Exists("filter", from, "-i", br, "-j", chain)
		if err != nil {
			return fmt.Errorf("iptables: %w", err)
		}
		if !ok {
			if err := ipt.Insert("filter", from, 1, "-i", br, "-j", chain); err != nil {
				return fmt.Errorf("iptables: jump from %s to %s: %w", from, chain, err)
			}
		}
	}
	return nil
}

// guardRule drops everything from the bridge while its chains are rewritten.
func guardRule(bridge string) []string {
	return []string{"-i", bridge, "-m", "comment", "--comment", "hearth guard: " + bridge + "'s rules are being rewritten", "-j", "DROP"}
}

// inputChain and forwardChain are the chains of one bridge's rules: a chain per bridge, so that
// two configs on one host, with bridges of their own, never rewrite each other's.
func inputChain(bridge string) string   { return "HEARTH-IN-" + bridge }
func forwardChain(bridge string) string { return "HEARTH-FWD-" + bridge }

// chainHolds reports whether chain holds exactly rules.
func chainHolds(ipt *iptables.IPTables, chain string, rules [][]string) (bool, error) {
	have, err := ipt.List("filter", chain)
	if err != nil {
		return false, fmt.Errorf("iptables: %w", err)
	}
	if len(have) != len(rules)+1 { // List includes the chain's own "-N" line
		return false, nil
	}
	for _, r := range rules {
		ok, err := ipt.Exists("filter", chain, r...)
		if err != nil || !ok {
			return false, err
		}
	}
	return true, nil
}

func rewriteChain(ipt *iptables.IPTables, chain string, rules [][]string) error {
	if err := ipt.ClearChain("filter", chain); err != nil {
		return fmt.Errorf("iptables: %w", err)
	}
	for _, r := range rules {
		if err := ipt.Append("filter", chain, r...); err != nil {
			return fmt.Errorf("iptables: %s %v: %w", chain, r, err)
		}
	}
	return nil
}

// firewall puts the bridge's isolation in place (isolateBridge) and makes it hold whatever order
// the FORWARD chain's jumps are in: CNI's firewall plugin puts its own jump, which admits the
// job's traffic, first in FORWARD, but its chain consults CNI-ADMIN (for "admin overrides")
// before admitting anything. One prepare at a time changes the rules.
func (e *Executor) firewall(ctx context.Context) error {
	unlock, err := e.lock(ctx, "bridge-firewall")
	if err != nil {
		return err
	}
	defer unlock()
	ipt, err := iptables.New()
	if err != nil {
		return fmt.Errorf("the bridge network needs iptables (apt-get install iptables): %w", err)
	}
	if err := e.isolateBridge(ipt); err != nil {
		return err
	}
	exists, err := ipt.ChainExists("filter", "CNI-ADMIN")
	if err != nil || !exists {
		return err
	}
	br := e.cfg.Jobs.Bridge.Name
	if err := ipt.AppendUnique("filter", "CNI-ADMIN", "-i", br, "-j", forwardChain(br)); err != nil {
		return fmt.Errorf("iptables: %w", err)
	}
	return nil
}

// nameServers are the name servers of bridge jobs: [jobs.bridge] dns, else the host's own that a
// job can reach (not loopback).
func (e *Executor) nameServers() ([]string, error) {
	if dns := e.cfg.Jobs.Bridge.DNS; len(dns) > 0 {
		return dns, nil
	}
	b, err := os.ReadFile("/etc/resolv.conf")
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("read the host's resolv.conf: %w", err)
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "nameserver" {
			continue
		}
		if a, err := netip.ParseAddr(f[1]); err == nil && !a.IsLoopback() && a.Is4() {
			out = append(out, a.String())
		}
	}
	return out, nil
}

// writeResolvConf writes the job's resolv.conf and hosts files under its state dir and returns
// their paths. A job without a reachable name server gets a warning in log.
func (e *Executor) writeResolvConf(id string, log io.Writer) (resolv, hosts string, err error) {
	servers, err := e.nameServers()
	if err != nil {
		return "", "", err
	}
	if len(servers) == 0 {
		fmt.Fprintln(log, "Warning: this job has no name server: the host's resolv.conf lists only loopback ones, which a job on the bridge cannot reach; set [jobs.bridge] dns")
	}
	var b strings.Builder
	for _, s := range servers {
		fmt.Fprintf(&b, "nameserver %s\n", s)
	}
	dir := e.jobDir(id)
	resolv, hosts = filepath.Join(dir, "resolv.conf"), filepath.Join(dir, "hosts")
	if err := os.WriteFile(resolv, []byte(b.String()), 0o644); err != nil {
		return "", "", fmt.Errorf("write the job's resolv.conf: %w", err)
	}
	h := fmt.Sprintf("127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.1.1\t%s\n", hostname(id))
	if err := os.WriteFile(hosts, []byte(h), 0o644); err != nil {
		return "", "", fmt.Errorf("write the job's hosts file: %w", err)
	}
	return resolv, hosts, nil
}
