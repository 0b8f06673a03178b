package config

import (
	"regexp"
	"testing"
)

const tiers = `
[nix.tiers.protected]
daemon_socket = "/nix/var/nix/daemon-socket/socket"
store_root = "/"

[nix.tiers.unprotected]
daemon_socket = "/run/u/socket"
store_root = "/var/lib/hearth/unprotected"
`

func TestTiers(t *testing.T) {
	c, err := Parse([]byte(tiers + minimal))
	if err != nil {
		t.Fatal(err)
	}
	if !c.Nix.Tiered() {
		t.Fatal("two tier tables, but not tiered")
	}
	p, u := c.Nix.TierFor(true), c.Nix.TierFor(false)
	if p.Name != TierProtected || p.DaemonSocket != "/nix/var/nix/daemon-socket/socket" || p.StoreDir() != "/nix/store" || p.GCRootsDir != "/nix/var/nix/gcroots/hearth" {
		t.Errorf("protected tier %+v", p)
	}
	if u.Name != TierUnprotected || u.StoreDir() != "/var/lib/hearth/unprotected/nix/store" || u.GCRootsDir != "/var/lib/hearth/unprotected/nix/var/nix/gcroots/hearth" {
		t.Errorf("unprotected tier %+v, store %s", u, u.StoreDir())
	}
	if c.Nix.Trusted() != p || len(c.Nix.Tiers()) != 2 {
		t.Errorf("trusted %+v, tiers %v", c.Nix.Trusted(), c.Nix.Tiers())
	}

	one, err := Parse([]byte("[nix]\ndaemon_socket = \"/s\"\n" + minimal))
	if err != nil {
		t.Fatal(err)
	}
	if one.Nix.Tiered() {
		t.Fatal("no tier tables, but tiered")
	}
	for _, protected := range []bool{true, false} {
		if got := one.Nix.TierFor(protected); got.Name != TierShared || got.DaemonSocket != "/s" || !got.System() {
			t.Errorf("TierFor(%v) = %+v, want the shared tier on /s", protected, got)
		}
	}
}

func TestTierErrors(t *testing.T) {
	unprotected := "[nix.tiers.unprotected]\ndaemon_socket = \"/run/u/socket\"\nstore_root = \"/var/lib/u\"\n"
	protected := "[nix.tiers.protected]\ndaemon_socket = \"/p\"\nstore_root = \"/\"\n"
	for _, tc := range []struct{ name, src, want string }{
		{"one tier", protected, `\[nix\.tiers\.unprotected\] is missing`},
		{"unknown tier", protected + unprotected + "[nix.tiers.staging]\ndaemon_socket = \"/x\"\nstore_root = \"/y\"\n", `line 7: nix\.tiers\.staging: unknown tier "staging"`},
		{"shared socket", protected + "[nix.tiers.unprotected]\ndaemon_socket = \"/p\"\nstore_root = \"/var/lib/u\"\n", `line 5: nix\.tiers\.unprotected\.daemon_socket = "/p" is the protected tier's socket too`},
		{"shared store", protected + "[nix.tiers.unprotected]\ndaemon_socket = \"/u\"\nstore_root = \"/\"\n", `line 6: nix\.tiers\.unprotected\.store_root = "/": the unprotected tier needs a store of its own`},
		{"protected elsewhere", "[nix.tiers.protected]\ndaemon_socket = \"/p\"\nstore_root = \"/srv\"\n" + unprotected, `line 3: nix\.tiers\.protected\.store_root = "/srv": the protected tier's store is the system store`},
		{"missing socket", "[nix.tiers.protected]\nstore_root = \"/\"\n" + unprotected, `line 1: nix\.tiers\.protected\.daemon_socket is missing`},
		{"relative root", protected + "[nix.tiers.unprotected]\ndaemon_socket = \"/u\"\nstore_root = \"var/u\"\n", `line 6: nix\.tiers\.unprotected\.store_root = "var/u": must be an absolute path`},
		{"both forms", "[nix]\ndaemon_socket = \"/s\"\n" + protected + unprotected, `line 2: nix\.daemon_socket: with \[nix\.tiers\] each tier names its own daemon_socket`},
		{"unknown tier key", protected + "store = \"x\"\n" + unprotected, `line 4: unknown key "nix\.tiers\.protected\.store"`},
		{"relative single socket", "[nix]\ndaemon_socket = \"sock\"\n", `line 2: nix\.daemon_socket = "sock": must be an absolute path`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.src + minimal))
			if err == nil {
				t.Fatalf("no error, want %s", tc.want)
			}
			if !regexp.MustCompile(tc.want).MatchString(err.Error()) {
				t.Fatalf("error %q does not match %q", err, tc.want)
			}
		})
	}
}
