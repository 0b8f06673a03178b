package testenv

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Outside stands in for the world beyond the runner host, which these machines cannot reach: a
// network namespace routed through the host (hearth-o<X>, 10.250.X.2, the host's end 10.250.X.1)
// with a web server and a name server, and a "cloud metadata" web server on 169.254.169.254
// routed the same way. Jobs on the bridge reach it through the host's NAT, as they would the
// internet.
type Outside struct {
	Netns string
	// Addr is the outside's address; HostAddr is the host's end of the veth, an address of the
	// host's own that jobs must not reach.
	Addr, HostAddr string
	// Name resolves to Addr at the outside's name server, which listens on Addr:53.
	Name string
	// WebURL serves Greeting at /hello; MetadataURL serves "metadata-secret" at /hello.
	WebURL, MetadataURL string
	Greeting            string

	veth  string
	procs []*exec.Cmd
	dir   string
}

// MetadataAddr is the link-local address clouds serve instance credentials on.
const MetadataAddr = "169.254.169.254"

// StartOutside starts the stand-in, with its servers' files and logs under dir.
func StartOutside(dir string) (o *Outside, err error) {
	for _, tool := range []string{"ip", "dnsmasq"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("%s is not installed: run ./scripts/setup.sh (apt-get install iproute2 dnsmasq-base)", tool)
		}
	}
	x, err := claimNetns("hearth-o")
	if err != nil {
		return nil, err
	}
	o = &Outside{Netns: fmt.Sprintf("hearth-o%d", x), Addr: fmt.Sprintf("10.250.%d.2", x), HostAddr: fmt.Sprintf("10.250.%d.1", x),
		Name: "outside.test", Greeting: "outside-says-hello", veth: fmt.Sprintf("hout%d", x), dir: dir}
	defer func() {
		if err != nil {
			o.Stop()
			o = nil
		}
	}()
	in := func(args ...string) []string { return append([]string{"netns", "exec", o.Netns}, args...) }
	for _, args := range [][]string{
		{"link", "add", o.veth, "type", "veth", "peer", "name", "eth0", "netns", o.Netns},
		{"addr", "add", o.HostAddr + "/24", "dev", o.veth},
		{"link", "set", o.veth, "up"},
		in("ip", "addr", "add", o.Addr+"/24", "dev", "eth0"),
		in("ip", "addr", "add", MetadataAddr+"/32", "dev", "lo"),
		in("ip", "link", "set", "eth0", "up"),
		in("ip", "link", "set", "lo", "up"),
		in("ip", "route", "add", "default", "via", o.HostAddr),
		{"route", "replace", MetadataAddr + "/32", "via", o.Addr},
	} {
		if err := runIP(args...); err != nil {
			return o, err
		}
	}
	www := filepath.Join(dir, "www")
	if err := os.MkdirAll(www, 0o755); err != nil {
		return o, err
	}
	if err := os.WriteFile(filepath.Join(www, "hello"), []byte(o.Greeting+"\n"), 0o644); err != nil {
		return o, err
	}
	meta := filepath.Join(dir, "metadata")
	if err := os.MkdirAll(meta, 0o755); err != nil {
		return o, err
	}
	if err := os.WriteFile(filepath.Join(meta, "hello"), []byte("metadata-secret\n"), 0o644); err != nil {
		return o, err
	}
	o.WebURL = "http://" + o.Addr + ":8080/hello"
	o.MetadataURL = "http://" + MetadataAddr + ":8080/hello"
	for _, srv := range [][]string{
		// busybox's httpd, not Python's http.server, which looks up its own address's name
		// before it listens, and would wait for a name server that is not there.
		in("/bin/busybox", "httpd", "-f", "-p", o.Addr+":8080", "-h", www),
		in("/bin/busybox", "httpd", "-f", "-p", MetadataAddr+":8080", "-h", meta),
		in("dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts", "--user=root", "--bind-interfaces", "--listen-address="+o.Addr,
			"--address=/"+o.Name+"/"+o.Addr, "--pid-file="+filepath.Join(dir, "dnsmasq.pid")),
	} {
		cmd, err := start(filepath.Join(dir, fmt.Sprintf("server-%d.log", len(o.procs))), os.Environ(), append([]string{"ip"}, srv...)...)
		if err != nil {
			return o, err
		}
		o.procs = append(o.procs, cmd)
	}
	for _, addr := range []string{o.Addr + ":8080", MetadataAddr + ":8080"} {
		if err := waitListening("tcp", addr, 10*time.Second); err != nil {
			return o, fmt.Errorf("the outside's web server %s: %w", addr, err)
		}
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if b, _ := exec.Command("ip", in("ss", "-uln")...).Output(); strings.Contains(string(b), o.Addr+":53") {
			break
		}
		if time.Now().After(deadline) {
			return o, errors.New("the outside's name server did not start: see " + dir)
		}
	}
	return o, nil
}

// Stop ends the servers and removes the namespace, the veth and the route.
func (o *Outside) Stop() {
	for _, p := range o.procs {
		stop(p)
	}
	o.procs = nil
	exec.Command("ip", "route", "del", MetadataAddr+"/32", "via", o.Addr).Run()
	exec.Command("ip", "link", "del", o.veth).Run()
	exec.Command("ip", "netns", "del", o.Netns).Run()
}

// claimNetns creates the network namespace <prefix><X> for the first X from 1 to 254 that has
// none, and returns X.
func claimNetns(prefix string) (int, error) {
	for x := 1; x <= 254; x++ {
		out, err := exec.Command("ip", "netns", "add", fmt.Sprintf("%s%d", prefix, x)).CombinedOutput()
		if err == nil {
			return x, nil
		}
		if !strings.Contains(string(out), "exists") {
			return 0, fmt.Errorf("ip netns add %s%d: %v: %s", prefix, x, err, bytes.TrimSpace(out))
		}
	}
	return 0, fmt.Errorf("every network namespace %s1 … %s254 exists: remove leftovers (ip netns del)", prefix, prefix)
}

func runIP(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}
