# Evaluates one of hearth's NixOS modules with nixpkgs' own module system, against the nixpkgs
# options it sets (nixpkgs-options.nix) and a stand-in for the pkgs functions it calls
# (stub-pkgs.nix), and returns what a test needs to check, as JSON:
#
#   nix-instantiate --eval --strict --json nixos/tests/eval.nix --argstr nixpkgsLib /path/to/nixpkgs.lib \
#     --argstr module $PWD/nixos/runner.nix --argstr configuration $PWD/case.nix
#
# nixpkgsLib is a copy of nix-community/nixpkgs.lib (nixpkgs' lib/ alone, 2.4 MB). The arguments
# are absolute paths given as strings, which may hold characters a Nix path literal cannot.
{
  nixpkgsLib,
  module,
  configuration,
}:
let
  lib = import (/. + nixpkgsLib + "/lib");
  pkgs = import ./stub-pkgs.nix { inherit lib; };
  evaluated = lib.evalModules {
    modules = [
      ./nixpkgs-options.nix
      (/. + module)
      (/. + configuration)
      { _module.args.pkgs = pkgs; }
    ];
  };
  inherit (evaluated) config;
  # hearth's own options (and their submodules' options, as the NixOS manual lists them) that
  # have no description.
  undescribed = map (o: o.name) (
    builtins.filter (
      o: lib.hasPrefix "services.hearth" o.name && (o.description or null == null || o.description == "")
    ) (lib.optionAttrSetToDocList evaluated.options)
  );
  hearthOptions = builtins.length (
    builtins.filter (o: lib.hasPrefix "services.hearth" o.name) (lib.optionAttrSetToDocList evaluated.options)
  );
  # A unit as its file would say it, less what only systemd reads.
  unit = u: {
    inherit (u)
      wantedBy
      after
      before
      wants
      requires
      environment
      path
      serviceConfig
      restartTriggers
      script
      ;
  };
  etc = lib.mapAttrs (
    _: e: {
      source = e.source.outPath or e.source;
      # What a stand-in builder was given: the TOML value or the text of the file.
      value = e.source.value or null;
      text = e.source.text or e.text;
    }
  ) config.environment.etc;
in
{
  failed = map (a: a.message) (builtins.filter (a: !a.assertion) config.assertions);
  inherit undescribed hearthOptions;
  inherit etc;
  services = lib.mapAttrs (_: unit) config.systemd.services;
  timers = lib.mapAttrs (_: t: { inherit (t) wantedBy timerConfig; }) config.systemd.timers;
  tmpfiles = config.systemd.tmpfiles.rules;
  nixSettings = config.nix.settings;
  gitlabRunner = config.services.gitlab-runner;
  users = lib.mapAttrs (_: u: {
    inherit (u) isSystemUser isNormalUser group extraGroups;
    keys = u.openssh.authorizedKeys.keys;
  }) config.users.users;
  groups = builtins.attrNames config.users.groups;
  atticd = config.services.atticd;
  postgresql = config.services.postgresql;
  nginx = config.services.nginx;
  acme = config.security.acme;
  sudo = config.security.sudo.extraRules;
  openssh = config.services.openssh;
  systemPackages = map (p: p.outPath) config.environment.systemPackages;
  # Paths as the strings they are, not copied into the store.
  grafanaProviders =
    let
      d = config.services.grafana.provision.dashboards.settings;
    in
    if d == null then
      [ ]
    else
      map (p: p // { options = p.options // { path = toString p.options.path; }; }) d.providers;
  prometheusScrapeConfigs = config.services.prometheus.scrapeConfigs;
}
