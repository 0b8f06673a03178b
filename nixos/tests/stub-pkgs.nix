# A stand-in for the few parts of nixpkgs hearth's modules call, for evaluating the modules
# without nixpkgs (nixos/tests/eval.nix). Packages are derivation-shaped attribute sets with made-up
# store paths; nothing here builds. The builders keep what they were given (`text`, `value`) so the
# tests can read what a module would write.
{ lib }:
let
  package =
    name:
    {
      type = "derivation";
      inherit name;
      outPath = "/nix/store/00000000000000000000000000000000-${name}";
    };
in
{
  coreutils = package "coreutils";
  iptables = package "iptables";
  iproute2 = package "iproute2";
  runc = package "runc";
  cni-plugins = package "cni-plugins";
  nix = package "nix";
  hearth = package "hearth";
  hearth-ci-env = package "hearth-ci-env";

  bashInteractive = package "bash-interactive";

  writeText = name: text: package name // { inherit text; };
  writeShellScript = name: text: package name // { text = "#!/bin/sh\n" + text; };
  writeScriptBin = name: text: package name // { inherit text; bin = name; };

  # As pkgs/pkgs-lib/formats.nix @ 001740f03dbdff478182996703602232e7ca5fc0: TOML values have no
  # null.
  formats.toml =
    { }:
    {
      type =
        let
          valueType =
            lib.types.oneOf [
              lib.types.bool
              lib.types.int
              lib.types.float
              lib.types.str
              lib.types.path
              (lib.types.attrsOf valueType)
              (lib.types.listOf valueType)
            ]
            // {
              description = "TOML value";
            };
        in
        valueType;
      generate = name: value: package name // { inherit value; };
    };
}
