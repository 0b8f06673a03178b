package testenv

import (
	"fmt"
	"os"
	"strings"
)

// The deploy tests and benchmarks deploy stand-in NixOS systems to targets that are Debian with Nix:
// a toplevel whose switch-to-configuration records each activation on the target (in
// /var/log/hearth-test-activations, as "TIME TOPLEVEL ACTION"), points /run/current-system at
// itself, and then does what its mode says.

// stc is the stand-in switch-to-configuration for a mode: ok, exit4, exit2, hang, slow (3 s).
func stc(mode string) string {
	end := map[string]string{
		"ok":    "exit 0",
		"slow":  "sleep 3; exit 0",
		"exit4": "echo 'warning: the following units failed: nginx.service'; exit 4",
		"exit2": "echo \"Activation script snippet 'users' failed (1)\"; exit 2",
		"hang":  "exec sleep 3600",
	}[mode]
	// A system that fails to activate fails to install its boot entry too.
	boot := "exit 0"
	if mode == "exit2" || mode == "exit4" {
		boot = "echo 'Failed to install bootloader'; exit 1"
	}
	return `#!/bin/sh
top=${0%/bin/switch-to-configuration}
echo "$(date +%s.%N) $top $1" >> /var/log/hearth-test-activations
echo "stand-in activation of $top ($1)"
if [ "$1" = boot ]; then
	` + boot + `
fi
ln -sfn "$top" /run/current-system
` + end + "\n"
}

// nixString quotes s as a Nix string.
func nixString(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`, "${", `\${`, "\n", `\n`).Replace(s) + `"`
}

// SystemExpr is a Nix expression for a stand-in NixOS system named for nonce: a toplevel with
// nixos-version and a bin/switch-to-configuration of the given mode, referring to an etc path of
// its own and to the store paths in with (linked as with-0, with-1, …), built with the tools.
func (e *Parts) SystemExpr(nonce, mode string, with ...string) string {
	var extra, links strings.Builder
	for i, p := range with {
		fmt.Fprintf(&extra, " with%d = builtins.storePath %q;", i, p)
		fmt.Fprintf(&links, " ln -s $with%d $out/with-%d;", i, i)
	}
	return fmt.Sprintf(`let tools = builtins.storePath %q;
  etc = derivation { name = "etc-%s"; system = "x86_64-linux"; builder = "${tools}/bin/bash"; PATH = "${tools}/bin"; args = [ "-c" "mkdir -p $out; echo %s > $out/motd" ]; };
in derivation {
  name = "nixos-system-%s"; system = "x86_64-linux"; builder = "${tools}/bin/bash"; PATH = "${tools}/bin";
  inherit etc; stc = %s;%s
  args = [ "-c" "mkdir -p $out/bin; echo 26.05.%s > $out/nixos-version; ln -s $etc $out/etc;%s printf '%%s' \"$stc\" > $out/bin/switch-to-configuration; chmod +x $out/bin/switch-to-configuration" ];
}
`, e.Tools, nonce, nonce, nonce, nixString(stc(mode)), extra.String(), nonce, links.String())
}

// BuildSystem builds SystemExpr(nonce, mode, with...) through the daemon, as root, and returns the
// toplevel.
func (d *Daemon) BuildSystem(nonce, mode string, with ...string) (string, error) {
	f, err := os.CreateTemp(d.parts.Dir, "system-*.nix")
	if err != nil {
		return "", err
	}
	defer os.Remove(f.Name())
	if _, err := f.WriteString(d.parts.SystemExpr(nonce, mode, with...)); err != nil {
		f.Close()
		return "", err
	}
	f.Close()
	out, err := d.Nix("nix-build", "--no-out-link", f.Name())
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(out), nil
}
